//! Messages between nodes, and the compact, stable text form used by transcripts and logs.
//!
//! A message is one flat struct, as in etcd: every kind uses a subset of the fields, listed on
//! [`MessageKind`]. Unused fields are zero. The byte layout is in [`crate::codec`].

use std::fmt;

use crate::membership::Configuration;
use crate::{Entry, EntryKind, LogIndex, NodeId, Payload, Term};

/// What a message asks or answers. The byte values are on the wire: never renumber.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// Leader → follower: `entries` follow the entry at `index` whose term is `log_term`;
    /// `commit` is the leader's commit index.
    Append = 1,
    /// Follower → leader. Accepted: the follower durably holds the leader's log up to `index`.
    /// Rejected: `index` is the rejected previous index, and (`reject_hint`, `log_term`) is the
    /// follower's last entry at or below it whose term is at most the leader's (fast backtracking).
    AppendResponse = 2,
    /// Leader → follower: `commit` (capped at the follower's match index) and `context`, the
    /// read-index round being confirmed.
    Heartbeat = 3,
    /// Follower → leader: echoes `context`.
    HeartbeatResponse = 4,
    /// Pre-candidate → voter: "would you vote for me in `term`?" with the candidate's last
    /// `index` and `log_term`. The receiver does not change its term.
    PreVote = 5,
    /// The answer (`reject` false: granted).
    PreVoteResponse = 6,
    /// Candidate → voter: vote for me in `term`, my last entry is (`index`, `log_term`).
    /// `context` is [`CAMPAIGN_TRANSFER`] when the campaign follows a leadership transfer.
    Vote = 7,
    /// The answer (`reject` false: granted).
    VoteResponse = 8,
    /// Leader → follower: one chunk of a snapshot (`snapshot`).
    Snapshot = 9,
    /// Follower → leader: for the snapshot at `index`, the follower holds the bytes before offset
    /// `context`: the leader continues (or resumes) from there.
    SnapshotResponse = 10,
    /// Leader → transferee: campaign now, skipping pre-vote (leadership transfer).
    TimeoutNow = 11,
    /// Follower → leader: give me a read index for the request `context`.
    ReadIndex = 12,
    /// Leader → follower: the request `context` may be served once `index` is applied
    /// (`reject` true: the leader cannot serve it now).
    ReadIndexResponse = 13,
}

/// `Message::context` of a `Vote` sent by a transferee: receivers vote even within a lease.
pub const CAMPAIGN_TRANSFER: u64 = 1;

impl MessageKind {
    /// The kind with byte value `byte`, if any.
    pub fn from_u8(byte: u8) -> Option<MessageKind> {
        use MessageKind::*;
        Some(match byte {
            1 => Append,
            2 => AppendResponse,
            3 => Heartbeat,
            4 => HeartbeatResponse,
            5 => PreVote,
            6 => PreVoteResponse,
            7 => Vote,
            8 => VoteResponse,
            9 => Snapshot,
            10 => SnapshotResponse,
            11 => TimeoutNow,
            12 => ReadIndex,
            13 => ReadIndexResponse,
            _ => return None,
        })
    }

    /// The etcd-style name used in transcripts.
    pub fn name(self) -> &'static str {
        use MessageKind::*;
        match self {
            Append => "MsgAppend",
            AppendResponse => "MsgAppendResponse",
            Heartbeat => "MsgHeartbeat",
            HeartbeatResponse => "MsgHeartbeatResponse",
            PreVote => "MsgPreVote",
            PreVoteResponse => "MsgPreVoteResponse",
            Vote => "MsgVote",
            VoteResponse => "MsgVoteResponse",
            Snapshot => "MsgSnapshot",
            SnapshotResponse => "MsgSnapshotResponse",
            TimeoutNow => "MsgTimeoutNow",
            ReadIndex => "MsgReadIndex",
            ReadIndexResponse => "MsgReadIndexResponse",
        }
    }
}

/// What describes a snapshot: the last entry it covers, its size, and the configuration as of
/// that entry (so a node restored from it knows the cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The index of the last entry the snapshot covers.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
    /// The snapshot's size in bytes (the host's serialized state machine).
    pub size_bytes: u64,
    /// The configuration in force at `index`.
    pub configuration: Configuration,
}

/// One chunk of a snapshot in flight: bytes `offset..offset + length` of the snapshot `meta`.
///
/// Raft emits chunks with `data` empty: raft holds no snapshot bytes. Before encoding, the
/// sending host fills `data` with exactly `length` bytes read at `offset` from its snapshot at
/// `meta.index` (see [`Message::snapshot_chunk_to_fill`]). A received chunk has `data` filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot this chunk belongs to.
    pub meta: SnapshotMeta,
    /// Where the chunk starts in the snapshot's bytes.
    pub offset: u64,
    /// The chunk's length in bytes; `offset + length <= meta.size_bytes`.
    pub length: u32,
    /// The bytes (empty until the sending host fills them).
    pub data: Payload,
}

impl SnapshotChunk {
    /// Whether this chunk ends the snapshot.
    pub fn is_last(&self) -> bool {
        self.offset + u64::from(self.length) == self.meta.size_bytes
    }
}

/// A message between two nodes. See [`MessageKind`] for which fields each kind uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What the message is.
    pub kind: MessageKind,
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term (for a pre-vote: the term it would campaign in).
    pub term: Term,
    /// A term that qualifies `index` (previous entry, last entry, or rejection hint).
    pub log_term: Term,
    /// An index whose meaning depends on the kind.
    pub index: LogIndex,
    /// The leader's commit index (append, heartbeat).
    pub commit: LogIndex,
    /// A refusal (responses only).
    pub reject: bool,
    /// Rejected appends: the follower's hint where to retry.
    pub reject_hint: LogIndex,
    /// Kind-specific number: read round, read request, snapshot offset, transfer flag.
    pub context: u64,
    /// Entries to append (appends only).
    pub entries: Vec<Entry>,
    /// A snapshot chunk (snapshot messages only).
    pub snapshot: Option<Box<SnapshotChunk>>,
}

impl Message {
    /// A message of `kind` with every other field zero.
    pub fn new(kind: MessageKind, from: NodeId, to: NodeId, term: Term) -> Message {
        Message {
            kind,
            from,
            to,
            term,
            log_term: Term(0),
            index: LogIndex(0),
            commit: LogIndex(0),
            reject: false,
            reject_hint: LogIndex(0),
            context: 0,
            entries: Vec::new(),
            snapshot: None,
        }
    }

    /// For a snapshot chunk raft emitted, the chunk whose `data` the host must fill before the
    /// message is encoded; `None` for any other message or a chunk already filled.
    pub fn snapshot_chunk_to_fill(&mut self) -> Option<&mut SnapshotChunk> {
        let chunk = self.snapshot.as_deref_mut()?;
        if chunk.length > 0 && chunk.data.is_empty() {
            Some(chunk)
        } else {
            None
        }
    }

    /// The payload bytes the message carries (entries and snapshot data).
    pub fn payload_bytes(&self) -> u64 {
        let entries: u64 = self.entries.iter().map(|e| e.payload.len() as u64).sum();
        entries + self.snapshot.as_ref().map_or(0, |c| c.data.len() as u64)
    }
}

/// Compact, stable text for an entry: `term/index kind payload`.
pub struct DisplayEntry<'a>(pub &'a Entry);

impl fmt::Display for DisplayEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entry = self.0;
        write!(f, "{}/{} ", entry.term, entry.index)?;
        match entry.kind {
            EntryKind::Noop => f.write_str("noop"),
            EntryKind::Configuration => match Configuration::decode(&entry.payload) {
                Ok(configuration) => write!(f, "conf{configuration}"),
                Err(_) => write!(f, "conf<bad {} bytes>", entry.payload.len()),
            },
            EntryKind::Command => {
                let printable = std::str::from_utf8(&entry.payload)
                    .ok()
                    .filter(|text| text.len() <= 32 && text.chars().all(|c| c.is_ascii_graphic()));
                match printable {
                    Some(text) => write!(f, "\"{text}\""),
                    None => write!(f, "<{} bytes>", entry.payload.len()),
                }
            }
        }
    }
}

/// Compact text for a list of entries: `[1/1 noop, 1/2 "x"]`.
pub struct DisplayEntries<'a>(pub &'a [Entry]);

impl fmt::Display for DisplayEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (position, entry) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", DisplayEntry(entry))?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for Message {
    /// `1->2 MsgAppend term=2 index=3 log_term=1 commit=3 entries=[2/4 noop]`: only the fields
    /// the kind uses, in a fixed order, so transcripts stay stable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MessageKind::*;
        write!(
            f,
            "{}->{} {} term={}",
            self.from,
            self.to,
            self.kind.name(),
            self.term
        )?;
        let rejected = if self.reject { " rejected" } else { "" };
        match self.kind {
            Append => {
                write!(
                    f,
                    " index={} log_term={} commit={}",
                    self.index, self.log_term, self.commit
                )?;
                if !self.entries.is_empty() {
                    write!(f, " entries={}", DisplayEntries(&self.entries))?;
                }
                Ok(())
            }
            AppendResponse if self.reject => write!(
                f,
                " index={} rejected hint={}/{}",
                self.index, self.log_term, self.reject_hint
            ),
            AppendResponse => write!(f, " index={}", self.index),
            Heartbeat => write!(f, " commit={} context={}", self.commit, self.context),
            HeartbeatResponse => write!(f, " context={}", self.context),
            PreVote | Vote => {
                write!(f, " index={} log_term={}", self.index, self.log_term)?;
                if self.context == CAMPAIGN_TRANSFER {
                    f.write_str(" transfer")?;
                }
                Ok(())
            }
            PreVoteResponse | VoteResponse => f.write_str(rejected),
            Snapshot => match &self.snapshot {
                Some(chunk) => write!(
                    f,
                    " snapshot={}/{} size={} conf{} offset={} length={}",
                    chunk.meta.term,
                    chunk.meta.index,
                    chunk.meta.size_bytes,
                    chunk.meta.configuration,
                    chunk.offset,
                    chunk.length
                ),
                None => f.write_str(" snapshot=none"),
            },
            SnapshotResponse => {
                write!(f, " index={} offset={}{rejected}", self.index, self.context)
            }
            TimeoutNow => Ok(()),
            ReadIndex => write!(f, " context={}", self.context),
            ReadIndexResponse => write!(
                f,
                " index={} context={}{rejected}",
                self.index, self.context
            ),
        }
    }
}

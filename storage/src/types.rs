//! The vocabulary shared by storage, raft and the host: indexes, terms, node ids, log entries.
//!
//! Every integer here is fixed-width because it reaches the disk and the wire.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// The position of an entry in the Raft log. The first entry ever appended has index 1; index 0
/// means "before the first entry" (an empty log that was never compacted).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

impl LogIndex {
    /// The index before this one. Panics on `LogIndex(0)`: there is nothing before it, and
    /// asking means an off-by-one upstream.
    pub fn prev(self) -> LogIndex {
        LogIndex(
            self.0
                .checked_sub(1)
                .expect("LogIndex(0) has no predecessor"),
        )
    }

    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.checked_add(1).expect("LogIndex overflow"))
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Raft term. Term 0 is the term of the empty log, before any election.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identity of a cluster member. Never 0: on disk and on the wire 0 means "nobody".
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an entry carries. The byte values are part of the on-disk format: never renumber.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// An application command (for atoll: a batch of WAL frames for one database).
    Command = 1,
    /// The empty entry a new leader appends to commit entries of earlier terms.
    Noop = 2,
    /// A cluster configuration (membership and roles), encoded by raft.
    Configuration = 3,
}

impl EntryKind {
    /// The kind stored as `byte`, or `None` if no kind has that value (a corrupt or foreign
    /// entry: the caller decides whether that is a torn tail or an error).
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            1 => Some(EntryKind::Command),
            2 => Some(EntryKind::Noop),
            3 => Some(EntryKind::Configuration),
            _ => None,
        }
    }
}

/// The bytes of an entry: cheap to clone, never copied by cloning.
///
/// A payload is either owned (a proposal, a decoded network message) or a borrowed window into a
/// memory-mapped segment of the log, which keeps that mapping alive while the payload lives. Both
/// dereference to `&[u8]`, so the apply path reads committed frames straight out of the map.
#[derive(Clone)]
pub struct Payload {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Empty,
    /// Invariant: `range` lies within `bytes`.
    Shared {
        bytes: Arc<Vec<u8>>,
        range: Range<usize>,
    },
    /// Invariant: `range` lies within the frozen (immutable) bytes of `map`.
    Mapped {
        map: Arc<crate::mmap::SegmentMap>,
        range: Range<usize>,
    },
}

impl Payload {
    /// The empty payload (no allocation).
    pub const fn empty() -> Payload {
        Payload { repr: Repr::Empty }
    }

    /// Takes ownership of `bytes` without copying them.
    pub fn from_vec(bytes: Vec<u8>) -> Payload {
        if bytes.is_empty() {
            return Payload::empty();
        }
        let range = 0..bytes.len();
        Payload {
            repr: Repr::Shared {
                bytes: Arc::new(bytes),
                range,
            },
        }
    }

    /// A window `range` of a shared buffer, for example one entry of a received message.
    /// Panics if `range` is not within `bytes`.
    pub fn from_shared(bytes: Arc<Vec<u8>>, range: Range<usize>) -> Payload {
        assert!(range.start <= range.end);
        assert!(range.end <= bytes.len());
        if range.is_empty() {
            return Payload::empty();
        }
        Payload {
            repr: Repr::Shared { bytes, range },
        }
    }

    /// A window of a mapped segment; used by the segment log only. Panics unless `range` lies
    /// within the map's frozen bytes (those are never written again).
    pub(crate) fn from_map(map: Arc<crate::mmap::SegmentMap>, range: Range<usize>) -> Payload {
        assert!(range.start <= range.end);
        assert!(range.end <= map.frozen());
        if range.is_empty() {
            return Payload::empty();
        }
        Payload {
            repr: Repr::Mapped { map, range },
        }
    }

    /// The payload's length in bytes, as stored on disk and sent on the wire.
    pub fn len_u32(&self) -> u32 {
        u32::try_from(self.len()).expect("payloads are smaller than 4 GiB")
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::empty()
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Empty => &[],
            Repr::Shared { bytes, range } => &bytes[range.clone()],
            Repr::Mapped { map, range } => map.slice(range.clone()),
        }
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_BYTES_MAX: usize = 16;
        write!(f, "Payload({} bytes", self.len())?;
        if !self.is_empty() {
            write!(f, ": ")?;
            for byte in self.iter().take(SHOWN_BYTES_MAX) {
                write!(f, "{byte:02x}")?;
            }
            if self.len() > SHOWN_BYTES_MAX {
                write!(f, "..")?;
            }
        }
        write!(f, ")")
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload::from_vec(bytes)
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Payload {
        Payload::from_vec(bytes.to_vec())
    }
}

/// One Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where the entry sits in the log.
    pub index: LogIndex,
    /// The term of the leader that created it.
    pub term: Term,
    /// What the payload means.
    pub kind: EntryKind,
    /// The entry's bytes, opaque to storage.
    pub payload: Payload,
}

/// The Raft state that must be durable before a node answers a vote or a newer term:
/// the current term and the vote cast in it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_payload_windows_share_bytes() {
        let bytes = Arc::new(vec![1, 2, 3, 4, 5]);
        let window = Payload::from_shared(Arc::clone(&bytes), 1..4);
        assert_eq!(&window[..], &[2, 3, 4]);
        assert_eq!(Arc::strong_count(&bytes), 2);
        let copy = window.clone();
        assert_eq!(Arc::strong_count(&bytes), 3);
        assert_eq!(copy, window);
        assert_eq!(Payload::from_shared(bytes, 2..2).len(), 0);
    }

    #[test]
    fn test_entry_kind_round_trip() {
        for kind in [
            EntryKind::Command,
            EntryKind::Noop,
            EntryKind::Configuration,
        ] {
            assert_eq!(EntryKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(EntryKind::from_u8(0), None);
        assert_eq!(EntryKind::from_u8(4), None);
    }

    #[test]
    #[should_panic(expected = "no predecessor")]
    fn test_index_zero_has_no_prev() {
        let _ = LogIndex(0).prev();
    }
}

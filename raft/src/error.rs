//! The errors raft's API returns. Raft performs no I/O, so this is a small enum: a request that
//! cannot be served here and now, or a storage read that failed (fatal for the node).

use std::fmt;
use std::io;

use crate::NodeId;

/// Why a request to the node was refused. Refusals change nothing.
#[derive(Debug)]
pub enum Error {
    /// This node is not the leader; `leader` is the leader it knows of, if any, for redirects.
    NotLeader {
        /// The leader this node last heard from in its current term.
        leader: Option<NodeId>,
    },
    /// The proposal or read was not accepted (too many uncommitted bytes or pending reads, or a
    /// leader that has not yet committed an entry of its term for a membership change).
    ProposalDropped,
    /// A leadership transfer is in progress: proposals wait until it completes or aborts.
    TransferInProgress,
    /// A membership change is still uncommitted (or a promotion is catching up): one at a time.
    ConfChangeInProgress,
    /// The node named in a membership or transfer request is not a member (or already is one,
    /// for `add`).
    UnknownNode(NodeId),
    /// The membership change is not allowed (removing the last voter, a bad address, ...).
    InvalidConfChange(&'static str),
    /// A request the node cannot serve as asked (a bad argument from the host).
    InvalidRequest(&'static str),
    /// A message the node cannot accept (wrong recipient, entries out of order).
    InvalidMessage(&'static str),
    /// Reading the log failed. Fatal: the host must stop the node and reopen its storage.
    Storage(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotLeader { leader: Some(id) } => write!(f, "not the leader (leader is {id})"),
            Error::NotLeader { leader: None } => write!(f, "not the leader (no leader known)"),
            Error::ProposalDropped => write!(f, "proposal dropped"),
            Error::TransferInProgress => write!(f, "leadership transfer in progress"),
            Error::ConfChangeInProgress => write!(f, "a membership change is in progress"),
            Error::UnknownNode(id) => write!(f, "node {id} is not a member"),
            Error::InvalidConfChange(why) => write!(f, "invalid membership change: {why}"),
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::InvalidMessage(why) => write!(f, "invalid message: {why}"),
            Error::Storage(error) => write!(f, "reading the log failed: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Storage(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Error {
        Error::Storage(error)
    }
}

/// Why bytes did not decode into a message or a configuration. Decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended before the named field.
    Truncated(&'static str),
    /// A format version this build does not know.
    Version(u8),
    /// A declared length or count above its maximum.
    TooLarge {
        /// The field.
        what: &'static str,
        /// The declared value.
        value: u64,
        /// The maximum allowed.
        max: u64,
    },
    /// A field with a value that is not allowed.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated(what) => write!(f, "input truncated in {what}"),
            DecodeError::Version(version) => write!(f, "unknown format version {version}"),
            DecodeError::TooLarge { what, value, max } => {
                write!(f, "{what} is {value}, above the maximum {max}")
            }
            DecodeError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

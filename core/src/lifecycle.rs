//! The lifecycle of a session's write, as an explicit state machine with checked transitions
//! (in the spirit of dqlite's `src/leader.c` exec states and `src/lib/sm.h`).
//!
//! ```text
//!                 write, slot busy                      granted
//!   ┌──────┐ ───────────────────────► ┌────────┐ ─────────────────────┐
//!   │ Idle │                          │ Queued │                      │
//!   └──────┘ ◄─────────────────────── └────────┘                      ▼
//!     ▲  │      timeout / closed /                               ┌───────────┐
//!     │  │      abandoned                                        │ Executing │
//!     │  └────────────────────── write, slot free ─────────────► └───────────┘
//!     │                                                           │   │    ▲ │
//!     │◄────────── error, rollback, nothing to commit ────────────┘   │    │ │
//!     │                                                               │    │ │ transaction
//!     │          ┌──────────┐ ◄──────── committed frames ─────────────┘    │ │ stays open
//!     │◄─────────│ Proposed │     (one command, maybe a group)             │ ▼
//!     │ applied: └──────────┘                                         ┌─────────────┐
//!     │ reply;                                                        │ Transaction │
//!     │ discarded or stale: error                                     └─────────────┘
//!     │                                                                      │
//!     └─────────────── session closed / aborted: rolled back ────────────────┘
//!                          next statement of the transaction: Transaction → Executing
//! ```
//!
//! A database's write slot mirrors it: `Free`, held by one session's open `Transaction`, or a
//! `Chain` of up to `chain_max` commands out. Later autocommit writers run as a group on top of
//! the commands out (their frames shown to the group's connections only) once the host reported
//! where the last one went in the log, and are proposed at once; a session that may open a
//! transaction waits until no command is out. A discarded command takes every later command
//! of its chain along (their pages were computed on top of it).

use std::fmt;

/// Where a session's write request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteState {
    /// No write in progress.
    Idle,
    /// Waiting in the database's FIFO for the write slot, since the given time.
    Queued {
        /// The database.
        database: String,
        /// When it was queued (host time).
        since: u64,
    },
    /// Its statements are running now (only within one engine call).
    Executing {
        /// The database.
        database: String,
    },
    /// An explicit transaction holds the database's write slot between requests.
    Transaction {
        /// The database.
        database: String,
    },
    /// Its committed frames were proposed; waiting for apply or discard.
    Proposed {
        /// The database.
        database: String,
        /// The proposal id.
        proposal: u64,
    },
}

/// The state names, for the transition table and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    /// [`WriteState::Idle`].
    Idle,
    /// [`WriteState::Queued`].
    Queued,
    /// [`WriteState::Executing`].
    Executing,
    /// [`WriteState::Transaction`].
    Transaction,
    /// [`WriteState::Proposed`].
    Proposed,
}

/// Every allowed transition; anything else is a programmer error.
const TRANSITIONS: &[(StateName, StateName)] = &[
    (StateName::Idle, StateName::Queued),
    (StateName::Idle, StateName::Executing),
    (StateName::Queued, StateName::Executing),
    (StateName::Queued, StateName::Idle),
    (StateName::Executing, StateName::Idle),
    (StateName::Executing, StateName::Transaction),
    (StateName::Executing, StateName::Proposed),
    (StateName::Transaction, StateName::Executing),
    (StateName::Transaction, StateName::Idle),
    (StateName::Proposed, StateName::Idle),
];

impl WriteState {
    /// The state's name.
    pub fn name(&self) -> StateName {
        match self {
            WriteState::Idle => StateName::Idle,
            WriteState::Queued { .. } => StateName::Queued,
            WriteState::Executing { .. } => StateName::Executing,
            WriteState::Transaction { .. } => StateName::Transaction,
            WriteState::Proposed { .. } => StateName::Proposed,
        }
    }

    /// Moves to `next`, panicking on a transition the table does not allow: a broken lifecycle
    /// means the engine's bookkeeping of the write slot is wrong, and continuing could let two
    /// writers compute pages against different states.
    pub fn transition(&mut self, next: WriteState) {
        let from = self.name();
        let to = next.name();
        assert!(
            TRANSITIONS.contains(&(from, to)),
            "illegal write transition {from:?} -> {to:?}"
        );
        *self = next;
    }

    /// The database this state concerns, if any.
    pub fn database(&self) -> Option<&str> {
        match self {
            WriteState::Idle => None,
            WriteState::Queued { database, .. }
            | WriteState::Executing { database }
            | WriteState::Transaction { database }
            | WriteState::Proposed { database, .. } => Some(database),
        }
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_allowed_path_autocommit_write() {
        let mut state = WriteState::Idle;
        let database = "d".to_string();
        state.transition(WriteState::Queued {
            database: database.clone(),
            since: 0,
        });
        state.transition(WriteState::Executing {
            database: database.clone(),
        });
        state.transition(WriteState::Proposed {
            database,
            proposal: 1,
        });
        state.transition(WriteState::Idle);
        assert_eq!(state, WriteState::Idle);
    }

    #[test]
    #[should_panic(expected = "illegal write transition")]
    fn test_illegal_transition_panics() {
        let mut state = WriteState::Idle;
        state.transition(WriteState::Proposed {
            database: "d".to_string(),
            proposal: 1,
        });
    }
}

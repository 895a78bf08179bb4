//! The engine's error types: [`ExecError`] for client requests, [`EngineError`] for opening,
//! applying, checkpointing and snapshots.

use std::fmt;
use std::io;

use crate::command::DecodeError;

/// Why a client request failed. SQL errors keep SQLite's extended code and message.
#[derive(Debug)]
pub enum ExecError {
    /// SQLite refused: extended result code and message are in the source error.
    Sqlite(rusqlite::Error),
    /// The transaction's frames exceeded the configured limit.
    TransactionTooLarge {
        /// The limit, in bytes of frames.
        bytes_max: usize,
    },
    /// The request waited for the write lock longer than allowed.
    Timeout {
        /// How long it waited, in the host's time unit.
        waited: u64,
    },
    /// Another session's explicit transaction held the write slot for longer than the writer
    /// may wait (`transaction_wait_max`): SQLite's "database is locked".
    Locked {
        /// Host time units waited behind the transaction.
        waited: u64,
    },
    /// Too many writers are already queued for this database.
    QueueFull {
        /// The queue's bound.
        queued_max: usize,
    },
    /// The write was proposed, but the proposal was discarded (for example leadership was lost):
    /// the database is as before the request.
    Discarded(String),
    /// The session's transaction was rolled back by the engine (leadership changed, a replicated
    /// write or a snapshot superseded it); the client must start again.
    Aborted(String),
    /// The session id is not open.
    UnknownSession,
    /// The statement id is not prepared on this session.
    UnknownStatement(u32),
    /// The session has not opened this database.
    DatabaseNotOpen(String),
    /// A database name atoll cannot use.
    BadDatabaseName(&'static str),
    /// The session already has a request in progress.
    RequestInProgress,
    /// There is no unfinished query on this session.
    NoQuery,
    /// The database is being recovered: it becomes readable once the node has replayed the
    /// Raft log up to `index`.
    Recovering {
        /// The index the node must apply first.
        index: u64,
    },
    /// A configured limit (sessions, statements) was reached.
    Limit(&'static str),
    /// `databases_max` databases are open and none is idle: another cannot be opened now.
    TooManyDatabases {
        /// The limit.
        databases_max: usize,
    },
    /// The database failed an integrity check or SQLite found a corrupt page in it: the node
    /// refuses writes to it (reads may go on) until it is repaired.
    Corrupt {
        /// The database.
        database: String,
        /// What was found.
        reason: String,
    },
    /// A file operation failed.
    Io(io::Error),
}

impl ExecError {
    /// SQLite's extended result code for this error (`SQLITE_ERROR` and friends); errors atoll
    /// raises itself map to the closest SQLite code, so protocol servers can forward one number.
    pub fn code(&self) -> i32 {
        use rusqlite::ffi;
        match self {
            ExecError::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => error.extended_code,
            ExecError::Sqlite(_) => ffi::SQLITE_ERROR,
            ExecError::TransactionTooLarge { .. } => ffi::SQLITE_FULL,
            ExecError::Timeout { .. } | ExecError::Locked { .. } | ExecError::QueueFull { .. } => {
                ffi::SQLITE_BUSY
            }
            ExecError::Discarded(_) | ExecError::Aborted(_) => ffi::SQLITE_ABORT,
            ExecError::UnknownSession
            | ExecError::UnknownStatement(_)
            | ExecError::DatabaseNotOpen(_)
            | ExecError::RequestInProgress
            | ExecError::NoQuery => ffi::SQLITE_MISUSE,
            ExecError::BadDatabaseName(_) => ffi::SQLITE_CANTOPEN,
            ExecError::Recovering { .. } => ffi::SQLITE_BUSY_RECOVERY,
            ExecError::Limit(_) => ffi::SQLITE_TOOBIG,
            ExecError::TooManyDatabases { .. } => ffi::SQLITE_CANTOPEN,
            ExecError::Corrupt { .. } => ffi::SQLITE_CORRUPT,
            ExecError::Io(_) => ffi::SQLITE_IOERR,
        }
    }
}

impl ExecError {
    /// The message a client sees: SQLite's own message (`sqlite3_errmsg`) for SQL errors, as a
    /// local SQLite would report it, and the [`fmt::Display`] text for the others.
    pub fn client_message(&self) -> String {
        match self {
            ExecError::Sqlite(rusqlite::Error::SqliteFailure(_, Some(message))) => message.clone(),
            ExecError::Sqlite(rusqlite::Error::SqliteFailure(error, None)) => error.to_string(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Sqlite(rusqlite::Error::SqliteFailure(error, Some(message))) => {
                write!(f, "{message} (SQLite error {})", error.extended_code)
            }
            ExecError::Sqlite(error) => write!(f, "{error}"),
            ExecError::TransactionTooLarge { bytes_max } => write!(
                f,
                "transaction too large: its pages exceed the limit of {bytes_max} bytes"
            ),
            ExecError::Timeout { waited } => {
                write!(f, "busy: waited {waited} for the write lock, giving up")
            }
            ExecError::Locked { .. } => write!(f, "database is locked"),
            ExecError::QueueFull { queued_max } => {
                write!(
                    f,
                    "busy: {queued_max} writers already queued for this database"
                )
            }
            ExecError::Discarded(reason) => write!(f, "write not committed: {reason}"),
            ExecError::Aborted(reason) => write!(f, "transaction rolled back: {reason}"),
            ExecError::UnknownSession => write!(f, "unknown session"),
            ExecError::UnknownStatement(id) => write!(f, "unknown statement {id}"),
            ExecError::DatabaseNotOpen(name) => write!(f, "database {name:?} is not open"),
            ExecError::BadDatabaseName(reason) => write!(f, "bad database name: {reason}"),
            ExecError::RequestInProgress => write!(f, "a request is already in progress"),
            ExecError::NoQuery => write!(f, "no unfinished query"),
            ExecError::Recovering { index } => write!(
                f,
                "database is recovering: readable once the log is applied up to {index}"
            ),
            ExecError::Limit(what) => write!(f, "limit reached: {what}"),
            ExecError::TooManyDatabases { databases_max } => write!(
                f,
                "too many databases open: all {databases_max} open ones are in use \
                 (atoll start --max-databases); try again later"
            ),
            ExecError::Corrupt { database, reason } => write!(
                f,
                "database {database:?} is corrupt ({reason}): writes to it are refused \
                 until it is repaired"
            ),
            ExecError::Io(error) => write!(f, "I/O error: {error}"),
        }
    }
}

impl std::error::Error for ExecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecError::Sqlite(error) => Some(error),
            ExecError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for ExecError {
    fn from(error: rusqlite::Error) -> ExecError {
        ExecError::Sqlite(error)
    }
}

impl From<io::Error> for ExecError {
    fn from(error: io::Error) -> ExecError {
        ExecError::Io(error)
    }
}

/// Errors of the engine itself: opening, applying, checkpointing, snapshots.
#[derive(Debug)]
pub enum EngineError {
    /// A file operation failed. After a failed write to a WAL or a database, the engine stops
    /// serving that database; reopen it.
    Io(io::Error),
    /// SQLite failed on an internal statement.
    Sqlite(rusqlite::Error),
    /// A checkpoint record (`<db>-atoll`) is corrupt.
    CorruptRecord(String),
    /// A snapshot stream is malformed or its checksum does not match.
    BadSnapshot(String),
    /// SQLite found a database file damaged while opening it (at start, or a closed one for an
    /// apply; its header page, or a page read to recover it): the node cannot serve it and
    /// repairs from its peers.
    CorruptDatabase {
        /// The database's name.
        database: String,
        /// What SQLite said.
        reason: String,
    },
    /// The configuration is invalid.
    Config(&'static str),
    /// A database's files do not hold its state as of the applied index yet: a checkpoint
    /// interrupted by a crash left its main file a mix of states, or it was checkpointed past
    /// the applied index (replay after a restart has not reached its last command). Its image
    /// is consistent once the log is applied up to `index`.
    NotSettled {
        /// The database's name.
        database: String,
        /// The applied index from which its image is consistent again.
        index: u64,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Io(error) => write!(f, "I/O error: {error}"),
            EngineError::Sqlite(error) => write!(f, "SQLite error: {error}"),
            EngineError::CorruptRecord(what) => write!(f, "corrupt checkpoint record: {what}"),
            EngineError::BadSnapshot(what) => write!(f, "bad snapshot: {what}"),
            EngineError::CorruptDatabase { database, reason } => {
                write!(f, "database {database:?} is corrupt: {reason}")
            }
            EngineError::Config(what) => write!(f, "bad configuration: {what}"),
            EngineError::NotSettled { database, index } => write!(
                f,
                "database {database:?} is recovering: its image is consistent once the log is \
                 applied up to {index}"
            ),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Io(error) => Some(error),
            EngineError::Sqlite(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for EngineError {
    fn from(error: io::Error) -> EngineError {
        EngineError::Io(error)
    }
}

impl From<rusqlite::Error> for EngineError {
    fn from(error: rusqlite::Error) -> EngineError {
        EngineError::Sqlite(error)
    }
}

/// What became of a committed command given to `apply`. Every replica reaches the same outcome
/// for the same log, so a rejected command is a no-op everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The frames are in the WAL and visible.
    Frames {
        /// The database.
        database: String,
        /// Frames appended.
        frame_count: u32,
    },
    /// The database's checkpoint already covers this index (replay after a restart).
    Skipped,
    /// The command is structurally malformed.
    Malformed(DecodeError),
    /// The command was computed against another state of the database (its base index is not
    /// the database's last applied command), or its page size differs.
    Stale {
        /// The database.
        database: String,
        /// The reason.
        reason: String,
    },
}

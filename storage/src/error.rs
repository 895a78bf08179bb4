//! The errors of the storage layer.
//!
//! [`LogError`] says what went wrong and where (file and byte offset). The [`LogStore`] methods
//! return `io::Result` as the trait requires: a `LogError` travels inside the `io::Error`
//! (`io::Error::get_ref()` and `downcast_ref::<LogError>()` find it), and an `io::Error` from the
//! operating system stays reachable through [`std::error::Error::source`].
//!
//! [`LogStore`]: crate::LogStore

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::types::LogIndex;

/// Everything that can go wrong opening or using the on-disk log, the hard state or snapshots.
#[derive(Debug)]
pub enum LogError {
    /// A system call failed on `path`.
    Io {
        /// What we were doing, e.g. "renaming a full segment".
        operation: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process (or another `SegmentLog` in this one) holds the data directory's lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file's bytes fail their checks: a crc mismatch, a bad magic number, an impossible length.
    /// Recovery never skips such bytes unless they are the torn tail of the open segment.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// The byte offset of the first bad byte (of the record that failed its check).
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// Two consecutive segments do not continue each other (missing or overlapping entries).
    Gap {
        /// The segment that does not start where the log so far ends.
        path: PathBuf,
        /// The index the log needed next.
        expected: LogIndex,
        /// The index the segment starts at.
        found: LogIndex,
    },
    /// The directory holds segments but no readable metadata file: the term, vote and compaction
    /// point are lost, and guessing them could break Raft's safety.
    MetadataMissing {
        /// The data directory.
        dir: PathBuf,
    },
    /// An entry's payload is larger than the log accepts.
    PayloadTooLarge {
        /// The entry.
        index: LogIndex,
        /// Its payload size in bytes.
        bytes: u64,
    },
    /// An earlier write or sync failed; the log refuses every change until it is reopened,
    /// because after a failed fsync the page cache can no longer be trusted.
    Failed,
    /// The open segment is full and is being closed by a sync request (see
    /// `SegmentLog::set_background_close`): nothing changed; try again once that request has
    /// ended. Not sticky.
    Closing,
}

/// Whether `error` is [`LogError::Closing`] (travelling inside an `io::Error`): the caller
/// retries once the sync request closing the full segment has ended.
pub fn is_closing(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<LogError>())
        .is_some_and(|inner| matches!(inner, LogError::Closing))
}

impl LogError {
    /// Wraps an I/O error with what we were doing and on which file.
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// A corruption at `offset` of `path`.
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        LogError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// The `io::ErrorKind` this error travels under.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            LogError::Io { source, .. } => source.kind(),
            LogError::Locked { .. } => io::ErrorKind::WouldBlock,
            LogError::Corrupt { .. } | LogError::Gap { .. } | LogError::MetadataMissing { .. } => {
                io::ErrorKind::InvalidData
            }
            LogError::PayloadTooLarge { .. } => io::ErrorKind::InvalidInput,
            LogError::Failed => io::ErrorKind::Other,
            LogError::Closing => io::ErrorKind::ResourceBusy,
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io {
                operation,
                path,
                source,
            } => write!(f, "{operation} {}: {source}", path.display()),
            LogError::Locked { path } => write!(
                f,
                "{} is locked by another process: the data directory is in use",
                path.display()
            ),
            LogError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{} is corrupt at byte offset {offset}: {reason}",
                path.display()
            ),
            LogError::Gap {
                path,
                expected,
                found,
            } => write!(
                f,
                "{} starts at index {found} but the log continues at index {expected}: \
                 entries are missing or overlap",
                path.display()
            ),
            LogError::MetadataMissing { dir } => write!(
                f,
                "{} holds log segments but no valid metadata file (metadata1, metadata2)",
                dir.display()
            ),
            LogError::PayloadTooLarge { index, bytes } => write!(
                f,
                "entry {index} has a payload of {bytes} bytes, more than the log accepts ({})",
                crate::segment::PAYLOAD_BYTES_MAX
            ),
            LogError::Failed => write!(
                f,
                "an earlier write or sync of the log failed; reopen the log (restart the node)"
            ),
            LogError::Closing => write!(
                f,
                "the full log segment is being closed; try again once its sync has ended"
            ),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<LogError> for io::Error {
    fn from(error: LogError) -> io::Error {
        io::Error::new(error.kind(), error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn test_log_error_travels_inside_io_error() {
        let error = LogError::io(
            "syncing",
            "/data/open-1",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let io_error = io::Error::from(error);
        assert_eq!(io_error.kind(), io::ErrorKind::StorageFull);
        let inner = io_error
            .get_ref()
            .and_then(|e| e.downcast_ref::<LogError>())
            .expect("the LogError is inside");
        assert!(inner.to_string().starts_with("syncing /data/open-1: "));
        let source = inner.source().expect("the OS error is the source");
        assert_eq!(
            source.downcast_ref::<io::Error>().unwrap().raw_os_error(),
            Some(libc::ENOSPC)
        );
        let corrupt = io::Error::from(LogError::corrupt("/d/1-2", 48, "crc mismatch"));
        assert_eq!(corrupt.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            corrupt.to_string(),
            "/d/1-2 is corrupt at byte offset 48: crc mismatch"
        );
    }
}

//! A full disk: the node stays up. Writes are refused (SQLITE_FULL) while the file system
//! holding the data directory has less than [`DISK_FREE_BYTES_MIN`] or fewer than
//! [`DISK_FREE_INODES_MIN`] inodes available, or while an append or an apply that failed for
//! want of space waits to be retried; reads go on; a leader hands leadership to a member with
//! room; everything resumes by itself once space is back. Each change of state is logged once.
//!
//! Why a margin and not only `ENOSPC`: a write refused before it is proposed is a clean error
//! for its client. A command that is already committed must still be applied, and its apply
//! writes WAL frames (and checkpoints write the database), so the leader keeps room for them;
//! an `ENOSPC` past the margin (another process filled the disk, or a follower's disk) is
//! still handled: the entries are given back to raft and retried (nothing acknowledged, nothing
//! skipped), at most every [`DISK_RETRY_INTERVAL`].

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

/// Below this many available bytes on the data directory's file system the node refuses new
/// writes: room for the next log segment (8 MiB, preallocated whole) and the WAL frames and
/// checkpoints of commands already committed.
pub(super) const DISK_FREE_BYTES_MIN: u64 = 16 << 20;
/// Below this many available inodes (on file systems that count them) writes are refused too:
/// a log segment, a snapshot, a database's WAL each need a file.
pub(super) const DISK_FREE_INODES_MIN: u64 = 64;
/// How often the available space is measured (`statvfs`) while writes come in, and how often
/// a stalled append or apply is retried while the disk is full.
pub(super) const DISK_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(super) fn is_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The disk-full state of one node.
pub(super) struct Disk {
    /// Where the data directory's files are (the node's `Inputs::disk`).
    files: Arc<dyn atoll_storage::Disk>,
    /// The data directory (the file system measured).
    dir: PathBuf,
    /// Writes are refused; `why` was logged when it began.
    full: Option<String>,
    /// An append or an apply failed for want of space and waits for a retry.
    stalled: bool,
    /// When space was last measured.
    measured_at: Option<Instant>,
    /// When a stalled write last failed or was retried.
    retried_at: Option<Instant>,
}

impl Disk {
    pub(super) fn new(files: Arc<dyn atoll_storage::Disk>, dir: PathBuf) -> Disk {
        Disk {
            files,
            dir,
            full: None,
            stalled: false,
            measured_at: None,
            retried_at: None,
        }
    }

    /// Whether new writes are refused.
    pub(super) fn is_full(&self) -> bool {
        self.full.is_some()
    }

    /// Whether a stalled append or apply may be tried now (always when not stalled).
    pub(super) fn may_write(&mut self, now: Instant) -> bool {
        if !self.stalled {
            return true;
        }
        if self
            .retried_at
            .is_some_and(|at| now.saturating_duration_since(at) < DISK_RETRY_INTERVAL)
        {
            return false;
        }
        self.retried_at = Some(now);
        true
    }

    /// An append or apply failed for want of space. Returns true when this starts a full state
    /// (the caller hands leadership over).
    pub(super) fn write_failed(&mut self, what: &str, error: &io::Error, now: Instant) -> bool {
        self.stalled = true;
        self.retried_at = Some(now);
        log::debug!("{what}: {error} (retried later)");
        self.enter(format!("{what}: {error}"))
    }

    /// Space ran short outside a write (preparing a segment). Returns true when this starts a
    /// full state.
    pub(super) fn space_short(&mut self, why: &str) -> bool {
        self.enter(why.to_owned())
    }

    /// A write that had stalled went through.
    pub(super) fn write_succeeded(&mut self) {
        self.stalled = false;
    }

    /// Measures the available space if it was not measured lately, entering or leaving the
    /// full state. Returns true when this starts a full state.
    pub(super) fn check(&mut self, now: Instant) -> bool {
        if self
            .measured_at
            .is_some_and(|at| now.saturating_duration_since(at) < DISK_RETRY_INTERVAL)
        {
            return false;
        }
        self.measured_at = Some(now);
        let available = match self.files.available_bytes(&self.dir) {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!("measuring free space in {}: {error}", self.dir.display());
                return false;
            }
        };
        if available < DISK_FREE_BYTES_MIN {
            return self.enter(format!(
                "{available} bytes available in {}, fewer than the {} kept free",
                self.dir.display(),
                DISK_FREE_BYTES_MIN
            ));
        }
        // Bytes without inodes are no room either: the next segment, snapshot or WAL file
        // could not be created (measured here too, or the state would flap between "full"
        // from a failed create and "space back" from the byte count).
        match self.files.available_inodes(&self.dir) {
            Ok(Some(inodes)) if inodes < DISK_FREE_INODES_MIN => {
                return self.enter(format!(
                    "{inodes} files (inodes) can still be created in {}, fewer than the {} \
                     kept free",
                    self.dir.display(),
                    DISK_FREE_INODES_MIN
                ));
            }
            Ok(_) => {}
            Err(error) => {
                warn!("measuring free inodes in {}: {error}", self.dir.display());
                return false;
            }
        }
        if self.full.is_some() && !self.stalled {
            self.full = None;
            info!(
                "disk space back: resuming writes ({available} bytes available in {})",
                self.dir.display()
            );
        }
        false
    }

    fn enter(&mut self, why: String) -> bool {
        if self.full.is_some() {
            return false;
        }
        warn!("disk full: writes refused ({why})");
        self.full = Some(why);
        true
    }
}

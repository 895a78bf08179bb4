//! [`SegmentLog`]: the Raft log in memory-mapped, preallocated segment files.
//!
//! A data directory holds:
//! - `LOCK`: locked while a `SegmentLog` has the directory open;
//! - `metadata1`, `metadata2`: the hard state and the compaction point (layout in `meta.rs`);
//! - `open-N`: segments being written, or prepared and still empty (spares). `N` is a counter;
//! - `FIRST-LAST`: closed segments (full, synced, read-only), e.g.
//!   `00000000000000000001-00000000000000000512`: they hold exactly the entries `FIRST..=LAST`;
//! - `open-N.tmp`: segments being prepared, removed on open (as is an all-zero `open-N`, an
//!   unfinished spare; segments are otherwise removed only when compacted or truncated away);
//! - `snapshots/`: the [`SnapshotStore`].
//!
//! # Durability
//!
//! - `append` writes entries into the open segment's file (`pwrite`; readable at once through
//!   its map), durable after the next `sync` (an `fdatasync` of the segment). Closing a full
//!   segment during `append` syncs it first, so entries in closed segments are always durable.
//! - A sync may also run off the caller's thread: [`SegmentLog::sync_begin`] takes out a
//!   [`SyncRequest`] (a shared handle on the open segment's map and the byte range to flush),
//!   anyone runs it ([`SyncRequest::run`]) while the log goes on appending, truncating and
//!   compacting, and [`SegmentLog::sync_end`] hands the outcome back. The request keeps its map
//!   alive, so a segment closed, cut or removed meanwhile is still flushed harmlessly (an
//!   unlinked file's pages). `sync_end` raises `durable_index` only if no truncation happened
//!   since `sync_begin`: entries cut and appended again under the same index and term are new
//!   bytes the request never covered.
//! - `truncate_after` and `compact_through` are durable on return, and crash-safe at every
//!   instant: a crash in the middle leaves either the old log, the new one, or (truncation only)
//!   a prefix of the old log that still holds every entry up to the truncation point.
//! - `save_hard_state` is durable on return (one `fdatasync` of one metadata file).
//!
//! # Closing in the background
//!
//! Closing a full segment in `append` (flush its tail, rename it, sync the directory) blocks
//! the caller for a few milliseconds of disk work. With
//! [`SegmentLog::set_background_close`] (the node's loop turns it on) an `append` that does
//! not fit in the open segment is refused instead, writing nothing ([`LogError::Closing`]; a
//! spare is made ready first), and the next [`SegmentLog::sync_begin`] returns a request that
//! also closes the segment: [`SyncRequest::run`] flushes the tail, renames the segment
//! `FIRST-LAST` and syncs the directory, off the caller's thread. Until its
//! [`SegmentLog::sync_end`], every change to the log's files is refused with `Closing`
//! (appends, truncations, compactions, the plain `sync`) or put off (new spares), so the files
//! change in exactly the order a synchronous close follows, and a crash at any instant leaves
//! what it would have left. `sync_end` moves the segment to the closed ones (its entries
//! durable) and opens the spare. A batch larger than a whole segment still rolls over in place.
//!
//! # Crash safety, step by step
//!
//! - A segment is prepared under a temporary name (preallocated, header written; a spare
//!   prepared off the caller's thread is also filled with zeros and synced, so that a log sync
//!   has no extent to commit), then renamed to `open-N`; one directory sync covers that rename
//!   and the closing rename of the full segment before the new one takes an entry. A crash
//!   can leave an all-zero `open-N` (it never held an entry), which recovery removes; any
//!   other `open-N` has a valid header.
//! - Entries are never written twice in place. Truncation builds a new file holding the kept
//!   prefix, syncs it and renames it *over* the segment it replaces (atomic), after deleting
//!   later segments newest first with a directory sync after each; a closed segment that must be
//!   cut is first renamed to a new `open-M`, so no two files ever claim the same entries.
//! - Compaction saves the new compaction point in the metadata first, then deletes the
//!   segments it covers; recovery finishes an interrupted deletion. With
//!   [`SegmentLog::set_background_removal`] the deletion is the caller's, off its thread
//!   ([`SegmentLog::take_removals`]); a crash before it is the same interrupted deletion.
//! - Recovery truncates a torn tail of an open segment (the bytes after the last valid record
//!   are zeroed, with a warning), and refuses, naming file and byte offset, any damage in a
//!   closed segment, any gap between segments, or a second open segment holding entries.
//! - A torn tail is only the last record written, followed by zeros (rule in
//!   `segment::damage_after`). A bad record followed by a valid one, or by non-zero bytes past
//!   the end its header claims, is damage, not a torn write: recovery refuses it, naming file
//!   and offset, rather than drop entries that may have been acknowledged. A flip in the very
//!   last record cannot be told from a torn write: that one record is dropped.
//!
//! # Memory
//!
//! Closed segments are mapped only when read, and at most `maps_cached_max` of them, holding at
//! most `maps_cached_bytes_max` bytes (or just the one read last), stay mapped (least recently
//! used first out), each with its offset index; the open segment is always mapped. Mapped pages
//! count in the process's RSS, so they are dropped (`MADV_DONTNEED`; the page cache keeps them)
//! where they are unlikely to be read soon: a segment's when it is closed, the open segment's
//! durable bytes but the newest [`OPEN_RESIDENT_BYTES`] as it fills, and all of them at
//! [`SegmentLog::release_memory`]. A
//! [`Payload`] handed out keeps its map alive, so callers should not hoard payloads from many old
//! segments. `term()` reads an in-memory list of term runs, one per term change.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{Disk, DiskFile, OpenMode, Removal};
use crate::error::LogError;
use crate::log_store::{LogRead, LogStore};
use crate::meta::{self, Metadata, MetadataStore, METADATA_FILE_NAMES};
use crate::mmap::{self, SegmentMap, SegmentWriter};
use crate::segment::{self, Stop, PAYLOAD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::snapshot::{create_dir_durably, list_dir, SnapshotStore};
use crate::types::{Entry, HardState, LogIndex, Payload, Term};

/// The default size of a segment file (8 MiB).
pub const SEGMENT_BYTES_DEFAULT: u64 = 8 << 20;
/// The smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// The largest segment size: offsets inside a segment are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// How many closed segments stay mapped by default.
pub const MAPS_CACHED_DEFAULT: usize = 4;
/// How many bytes of closed segments stay mapped by default (64 MiB): only segments of
/// oversized entries reach it, since `MAPS_CACHED_DEFAULT` default segments are 32 MiB.
pub const MAPS_CACHED_BYTES_DEFAULT: u64 = 64 << 20;

/// How many of the open segment's newest durable bytes stay mapped in (resident) while it
/// fills: recent entries are read again soon (sent to followers, applied). Older ones leave the
/// process's memory once as many again have been synced after them.
pub const OPEN_RESIDENT_BYTES: usize = 1 << 20;

const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
// Segment sizes and offsets fit in a 32-bit `usize` (armv7), and offsets in the `u32` index.
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!((PAYLOAD_BYTES_MAX as u64) < SEGMENT_BYTES_MAX);
// With the defaults, the log maps at most the open segment and 64 MiB of closed ones: a small
// part of the 3 GiB of address space a 32-bit (armv7) process has.
const _: () =
    assert!(MAPS_CACHED_DEFAULT as u64 * SEGMENT_BYTES_DEFAULT <= MAPS_CACHED_BYTES_DEFAULT);

const LOCK_FILE_NAME: &str = "LOCK";
const SNAPSHOT_DIR_NAME: &str = "snapshots";
const OPEN_PREFIX: &str = "open-";
const TEMP_SUFFIX: &str = ".tmp";
const ZERO_CHUNK_BYTES: usize = 64 << 10;

/// How a [`SegmentLog`] lays out its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The size of a segment file. An entry too large for an empty segment of this size gets a
    /// segment of its own, just large enough.
    pub segment_bytes: u64,
    /// How many closed segments may stay mapped at once (at least 1). Bounds the address space
    /// used, which matters on 32-bit machines.
    pub maps_cached_max: usize,
    /// How many bytes of closed segments may stay mapped at once. The segment read last always
    /// stays mapped, whatever its size; older ones are unmapped first. With `maps_cached_max`,
    /// this keeps a log holding a few oversized entries (each in a segment of its own, up to
    /// 1 GiB) from filling a 32-bit address space.
    pub maps_cached_bytes_max: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            maps_cached_max: MAPS_CACHED_DEFAULT,
            maps_cached_bytes_max: MAPS_CACHED_BYTES_DEFAULT,
        }
    }
}

/// The durable Raft log of one node; see the module documentation.
pub struct SegmentLog {
    /// Where every file of the log is.
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Held for the lock; released when the log is dropped.
    _lock_file: Arc<dyn DiskFile>,
    options: Options,
    metadata: MetadataStore,
    /// Invariant: sorted, contiguous (`closed[k + 1].first == closed[k].last + 1`), and the last
    /// one ends right before the open segment's first entry, if it has any.
    closed: Vec<ClosedSegment>,
    /// The segment appends go to; `None` until the first append after open or truncation.
    open: Option<OpenSegment>,
    /// Prepared empty segments, ready to become the open one.
    spares: Vec<Spare>,
    /// The counter of the next `open-N` file.
    open_counter_next: u64,
    runs: TermRuns,
    /// Invariant: `first_index == compacted index + 1`.
    first_index: LogIndex,
    /// Invariant: `first_index - 1 <= last_index`.
    last_index: LogIndex,
    /// Invariant: `durable_index <= last_index`.
    durable_index: LogIndex,
    /// Truncations done since open: a [`SyncRequest`] begun before one no longer describes the
    /// log when it ends.
    truncations: u64,
    cache: RefCell<MapCache>,
    /// Set by a failed write or sync: every later change is refused.
    failed: bool,
    /// A segment was renamed (a spare prepared, a full segment closed) and the directory not
    /// yet synced; done before the next spare takes entries.
    dir_sync_pending: bool,
    /// Full segments are closed by the next sync request, off the caller's thread (see
    /// "Closing in the background"); off by default.
    background_close: bool,
    /// The open segment is full: appends are refused until the sync request that closes it
    /// (the next one begun) has ended. Holds the bytes the refused batch needs in a new segment.
    close_wanted: Option<usize>,
    /// A sync request closing the open segment is out: appends, truncations, compactions and
    /// new spares wait for its end, so that no file of the log changes meanwhile.
    closing: Option<usize>,
    /// Compactions leave the files they cover for the caller to delete off its thread
    /// ([`SegmentLog::take_removals`]); off by default.
    background_removal: bool,
    /// The segment files compactions took out of the log, not yet handed out.
    removals: Vec<PathBuf>,
    /// A spare is being prepared off the caller's thread ([`SegmentLog::spare_request`]).
    spare_preparing: bool,
    /// A spare handed back while a close was out: its rename may have come after the close's
    /// directory sync, so it joins the spares only at the close's end, its name not durable.
    spare_after_close: Option<Spare>,
    snapshots: SnapshotStore,
    #[cfg(any(test, feature = "testing"))]
    faults: Faults,
}

#[derive(Debug, Clone)]
struct ClosedSegment {
    first: LogIndex,
    last: LogIndex,
    name: String,
}

struct OpenSegment {
    counter: u64,
    name: String,
    file: Arc<dyn DiskFile>,
    writer: SegmentWriter,
    /// The file's (and the map's) length.
    capacity: usize,
    /// The index of the first entry; meaningless while `offsets` is empty.
    first: LogIndex,
    /// Where each entry's record starts: entry `first + k` at `offsets[k]`.
    offsets: Vec<u32>,
    /// Where the next record goes. Invariant: every byte from here to `capacity` is zero.
    end: usize,
    /// Invariant: `synced_end <= end`; bytes below it are durable.
    synced_end: usize,
    /// Pages below this were dropped from the process's memory (see "Memory" in the module
    /// documentation). Invariant: `released_end <= synced_end`.
    released_end: usize,
}

impl OpenSegment {
    fn last(&self) -> Option<LogIndex> {
        (!self.offsets.is_empty()).then(|| LogIndex(self.first.0 + self.offsets.len() as u64 - 1))
    }

    fn offset_of(&self, index: LogIndex) -> usize {
        self.offsets[(index.0 - self.first.0) as usize] as usize
    }
}

/// One sync of a [`SegmentLog`], taken out of it by [`SegmentLog::sync_begin`] so that it can
/// run on another thread while the log goes on (see "Durability" in the module
/// documentation). Hand it back to [`SegmentLog::sync_end`] with what [`SyncRequest::run`]
/// returned.
pub struct SyncRequest {
    /// The open segment's unsynced bytes, if any.
    flush: Option<SyncFlush>,
    /// After the flush: the open segment's closing rename and the directory sync.
    close: Option<SegmentClose>,
    /// The last entry the sync makes durable.
    last: LogIndex,
    /// The log's truncation count when the sync began.
    truncations: u64,
}

struct SyncFlush {
    map: Arc<SegmentMap>,
    range: std::ops::Range<usize>,
    /// For errors.
    path: PathBuf,
}

/// A full segment's close, run by a sync request: renamed `FIRST-LAST`, then the directory
/// synced (which also makes the spares' names durable).
struct SegmentClose {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    from: String,
    to: String,
    first: LogIndex,
    last: LogIndex,
}

impl SyncRequest {
    /// The last entry the sync makes durable (if the log is not truncated before it ends).
    pub fn last_index(&self) -> LogIndex {
        self.last
    }

    /// Flushes the bytes and waits for the disk: blocking, on any thread.
    pub fn run(&self) -> io::Result<()> {
        if let Some(flush) = &self.flush {
            flush.map.flush(flush.range.clone())?;
        }
        if let Some(close) = &self.close {
            close
                .disk
                .rename(&close.dir.join(&close.from), &close.dir.join(&close.to))?;
            close.disk.sync_dir(&close.dir)?;
        }
        Ok(())
    }

    /// Whether the request closes the open segment (its entries count as durable, and the
    /// log takes appends again, once it ends).
    pub fn closes_segment(&self) -> bool {
        self.close.is_some()
    }
}

impl fmt::Debug for SyncRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncRequest")
            .field("last", &self.last)
            .field(
                "bytes",
                &self.flush.as_ref().map_or(0, |flush| flush.range.len()),
            )
            .field("truncations", &self.truncations)
            .field("closes", &self.close.as_ref().map(|close| &close.to))
            .finish()
    }
}

/// The new file that replaces a segment cut by a truncation, with what it holds.
struct Replacement {
    name: String,
    counter: u64,
    first: LogIndex,
    offsets: Vec<u32>,
    /// The kept records, as copied into the file after its header.
    body_bytes: usize,
    file: Arc<dyn DiskFile>,
    capacity: usize,
}

/// The preparation of the next segment, taken out of the log by [`SegmentLog::spare_request`]
/// to run on another thread; hand it back to [`SegmentLog::spare_ready`].
pub struct SpareRequest {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    counter: u64,
    capacity: usize,
    /// The prepared file, once `run` succeeded.
    file: Option<Arc<dyn DiskFile>>,
}

impl SpareRequest {
    fn name(&self) -> String {
        format!("{OPEN_PREFIX}{}", self.counter)
    }

    /// Creates the segment under a temporary name, preallocates it, writes its header, fills
    /// it with zeros ([`Disk::write_zeros`]: the log's syncs then flush only data), syncs
    /// it and renames it `open-N` (its directory entry is synced before it takes an entry, as
    /// for any spare). On a full disk the temporary file is removed and nothing is left.
    pub fn run(&mut self) -> io::Result<()> {
        let name = self.name();
        let temp_path = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        let file = self.disk.open(&temp_path, OpenMode::CreateNew)?;
        if let Err(error) = file.allocate(self.capacity as u64) {
            drop(file);
            let _ = self.disk.remove_file(&temp_path);
            return Err(error);
        }
        file.write_all_at(&segment::encode_segment_header(), 0)?;
        self.disk.write_zeros(
            &temp_path,
            SEGMENT_HEADER_BYTES as u64..self.capacity as u64,
        )?;
        file.sync()?;
        self.disk.rename(&temp_path, &self.dir.join(&name))?;
        self.file = Some(file);
        Ok(())
    }
}

struct Spare {
    counter: u64,
    name: String,
    file: Arc<dyn DiskFile>,
    capacity: usize,
}

/// What the fault injection of tests may do to the next calls.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
struct Faults {
    /// Mutating calls left before one fails (sticky).
    calls_left: Option<u64>,
    /// Preallocations left before one fails with `ENOSPC` (clean).
    preallocations_left: Option<u64>,
    /// File operations (create, rename, remove) left before the log stops dead, as if the
    /// power were cut right there: the operation does not happen and the log fails (sticky).
    /// Every operation is followed by a directory sync, so the files then are exactly what a
    /// crash at that instant leaves.
    file_operations_left: std::cell::Cell<Option<u64>>,
}

impl SegmentLog {
    /// Opens the log in `dir`, creating the directory and an empty log if there is none, and
    /// recovers it (see the module documentation). Fails if another process holds the
    /// directory, or if the files are damaged beyond a torn tail.
    ///
    /// # Panics
    ///
    /// If `options.segment_bytes` is outside `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX` or
    /// `options.maps_cached_max` is 0: those are programmer errors, not operating conditions.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<SegmentLog, LogError> {
        SegmentLog::open_on(crate::StdDisk::shared(), dir, options)
    }

    /// [`SegmentLog::open`] on `disk`: every file of the log goes through it.
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: impl AsRef<Path>,
        options: Options,
    ) -> Result<SegmentLog, LogError> {
        assert!(
            (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&options.segment_bytes),
            "segment_bytes out of range"
        );
        assert!(
            options.maps_cached_max >= 1,
            "maps_cached_max is at least 1"
        );
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&*disk, &dir)?;
        let lock_file = lock_dir(&*disk, &dir)?;
        let names = list_dir(&*disk, &dir)?;

        let mut closed_names = Vec::new();
        let mut open_names = Vec::new();
        for name in names {
            // Only our own temporary names: never delete a file we did not make.
            let ours_temp = name
                .strip_suffix(TEMP_SUFFIX)
                .is_some_and(|stem| parse_open_name(stem).is_some());
            if ours_temp {
                let path = dir.join(&name);
                log::warn!("removing unfinished file {}", path.display());
                disk.remove_file(&path)
                    .map_err(|error| LogError::io("removing unfinished file", &path, error))?;
            } else if let Some((first, last)) = parse_closed_name(&name) {
                if first > last || first.0 == 0 {
                    return Err(LogError::corrupt(
                        dir.join(&name),
                        0,
                        "segment name holds an impossible index range",
                    ));
                }
                closed_names.push((first, last, name));
            } else if let Some(counter) = parse_open_name(&name) {
                open_names.push((counter, name));
            } else if name != LOCK_FILE_NAME
                && name != SNAPSHOT_DIR_NAME
                && !METADATA_FILE_NAMES.contains(&name.as_str())
            {
                log::warn!("ignoring unknown file {}", dir.join(&name).display());
            }
        }

        let metadata_files = [
            meta::read_metadata_file(&*disk, &dir.join(METADATA_FILE_NAMES[0]))?,
            meta::read_metadata_file(&*disk, &dir.join(METADATA_FILE_NAMES[1]))?,
        ];
        let chosen = meta::choose_metadata(&dir, metadata_files)?;
        // What a crash left in the page cache of the metadata files (a save whose sync failed)
        // is made durable before the log acts on it (removing the segments its compaction
        // point covers): else a later power cut takes the point back while those segments
        // stay gone, a gap (seed 347).
        for name in METADATA_FILE_NAMES {
            let path = dir.join(name);
            let file = match disk.open(&path, OpenMode::Write) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(LogError::io("opening metadata file", &path, error)),
            };
            file.sync()
                .map_err(|error| LogError::io("syncing metadata file", &path, error))?;
        }
        let mut metadata = MetadataStore::new(Arc::clone(&disk), &dir, chosen);
        if chosen.is_none() {
            if !closed_names.is_empty() || !open_names.is_empty() {
                return Err(LogError::MetadataMissing { dir });
            }
            log::info!("creating a new log in {}", dir.display());
            metadata
                .save(HardState::default(), LogIndex(0), Term(0))
                .map_err(|(error, _)| error)?;
        }
        let Metadata {
            compacted_index, ..
        } = *metadata.current();

        // Closed segments, in index order. Those wholly covered by the compaction point are the
        // leftovers of a compaction interrupted by a crash: finish it.
        closed_names.sort();
        let mut runs = TermRuns::default();
        let mut closed = Vec::new();
        let mut expected: Option<LogIndex> = None;
        for (first, last, name) in closed_names {
            let path = dir.join(&name);
            if last <= compacted_index {
                log::info!("removing {} (compacted away)", path.display());
                remove_file(&*disk, &path)?;
                continue;
            }
            check_continues(&path, expected, first, compacted_index)?;
            let found = recover_closed(&*disk, &path, first, last, compacted_index)?;
            runs.extend(&found);
            expected = Some(last.next());
            closed.push(ClosedSegment { first, last, name });
        }

        // Open segments: at most one holds entries; the others are prepared spares.
        open_names.sort();
        let open_counter_next = open_names.last().map_or(1, |(counter, _)| counter + 1);
        let mut spares = Vec::new();
        let mut current: Option<RecoveredOpen> = None;
        for (counter, name) in open_names {
            let path = dir.join(&name);
            let Some(recovered) = recover_open(&*disk, &path, counter, name, compacted_index)?
            else {
                log::warn!(
                    "removing {}: empty or all zeros (a spare whose preparation a crash cut short)",
                    path.display()
                );
                remove_file(&*disk, &path)?;
                continue;
            };
            match recovered.last() {
                None => spares.push(Spare {
                    counter: recovered.counter,
                    name: recovered.name,
                    file: recovered.file,
                    capacity: recovered.capacity,
                }),
                Some(last) if last <= compacted_index => {
                    log::info!("removing {} (compacted away)", path.display());
                    drop(recovered);
                    remove_file(&*disk, &path)?;
                }
                Some(_) => {
                    if let Some(other) = &current {
                        return Err(LogError::corrupt(
                            &path,
                            SEGMENT_HEADER_BYTES as u64,
                            format!("holds entries, and so does {}", other.name),
                        ));
                    }
                    current = Some(recovered);
                }
            }
        }
        // Names a crash left only in the page cache (a rename or a new file whose directory
        // sync failed or never ran) are made durable now, as the open segment's bytes are
        // below: else a power cut later, after new segments, could bring an old name back
        // (seed 50,096: a segment closed before an EIO came back as a second open one).
        sync_dir_file(&*disk, &dir)?;
        let open = match current {
            None => None,
            Some(recovered) => {
                let path = dir.join(&recovered.name);
                check_continues(&path, expected, recovered.first, compacted_index)?;
                runs.extend(&recovered.runs);
                // Whatever the page cache held from before a process crash is made durable now,
                // so that `durable_index() == last_index()` right after open is true.
                recovered
                    .file
                    .sync()
                    .map_err(|error| LogError::io("syncing open segment", &path, error))?;
                let (_, writer) =
                    SegmentMap::open_writable(&recovered.file, recovered.capacity, recovered.end)
                        .map_err(|error| LogError::io("mapping open segment", &path, error))?;
                Some(OpenSegment {
                    counter: recovered.counter,
                    name: recovered.name,
                    file: recovered.file,
                    writer,
                    capacity: recovered.capacity,
                    first: recovered.first,
                    offsets: recovered.offsets,
                    end: recovered.end,
                    synced_end: recovered.end,
                    released_end: 0,
                })
            }
        };

        let first_index = compacted_index.next();
        let last_index = match (&open, closed.last()) {
            (Some(open), _) => open.last().expect("the open segment holds entries"),
            (None, Some(segment)) => segment.last,
            (None, None) => compacted_index,
        };
        runs.compact(first_index);
        let snapshots = SnapshotStore::open_on(Arc::clone(&disk), &dir.join(SNAPSHOT_DIR_NAME))?;
        let log = SegmentLog {
            disk,
            dir,
            _lock_file: lock_file,
            cache: RefCell::new(MapCache::new(
                options.maps_cached_max,
                options.maps_cached_bytes_max,
            )),
            options,
            metadata,
            closed,
            open,
            spares,
            open_counter_next,
            runs,
            first_index,
            last_index,
            durable_index: last_index,
            truncations: 0,
            failed: false,
            dir_sync_pending: false,
            background_close: false,
            close_wanted: None,
            closing: None,
            background_removal: false,
            removals: Vec::new(),
            spare_preparing: false,
            spare_after_close: None,
            snapshots,
            #[cfg(any(test, feature = "testing"))]
            faults: Faults::default(),
        };
        log::info!(
            "opened log {}: entries {}..={}, term {}, {} closed segments",
            log.dir.display(),
            log.first_index,
            log.last_index,
            log.hard_state().term,
            log.closed.len()
        );
        log.check_invariants();
        Ok(log)
    }

    /// How many truncations the log did since it was opened: a host holding acknowledgements
    /// for a sync in flight learns here that some of their entries may be gone.
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The snapshot store of this data directory (its `snapshots/` subdirectory).
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// The index and term of the compaction point (0 and 0 if never compacted).
    pub fn compacted(&self) -> (LogIndex, Term) {
        let metadata = self.metadata.current();
        (metadata.compacted_index, metadata.compacted_term)
    }

    /// How many closed segments are mapped right now (never more than `maps_cached_max`).
    pub fn maps_cached_count(&self) -> usize {
        self.cache.borrow().slots.len()
    }

    /// How many bytes of closed segments are mapped right now: at most `maps_cached_bytes_max`,
    /// or the size of the one segment read last if that alone is larger.
    pub fn maps_cached_bytes(&self) -> u64 {
        self.cache.borrow().bytes
    }

    /// The last index of the newest closed segment that ends at or before `limit`: compacting
    /// through it frees every closed file it can, in one save of the compaction point. `None`
    /// when no closed segment ends by `limit`.
    pub fn closed_segment_last_at_most(&self, limit: LogIndex) -> Option<LogIndex> {
        self.closed
            .iter()
            .map(|segment| segment.last)
            .take_while(|&last| last <= limit)
            .last()
    }

    /// The open segment's bytes written but not synced yet, as (file, offset, length): what a
    /// power loss may take (past them the file holds its preallocated zeros). A simulator
    /// cutting the power zeroes them after dropping the log.
    pub fn unsynced_bytes(&self) -> Option<(PathBuf, u64, u64)> {
        let open = self.open.as_ref()?;
        (open.end > open.synced_end).then(|| {
            (
                self.dir.join(&open.name),
                open.synced_end as u64,
                (open.end - open.synced_end) as u64,
            )
        })
    }

    /// Drops the pages of the log's maps from the process's memory: every mapped closed
    /// segment and the open segment's durable bytes (the page cache keeps them; a later read
    /// maps them in again). For a host that has gone idle. Returns the bytes released.
    pub fn release_memory(&mut self) -> u64 {
        let mut released = 0;
        for slot in &self.cache.borrow().slots {
            released += slot.map.release(0..slot.map.frozen()) as u64;
        }
        if let Some(open) = &mut self.open {
            let end = page_floor(open.synced_end);
            released += open.writer.map().release(open.released_end..end) as u64;
            open.released_end = end;
        }
        released
    }

    /// How many segment files the log has: closed, open (with entries) and spares.
    pub fn segment_files_count(&self) -> usize {
        self.closed.len() + usize::from(self.open.is_some()) + self.spares.len()
    }

    /// Prepares the next segment ahead of time, if no spare of the default size is ready: the
    /// host calls it when idle, so that the append that fills the open segment does not also
    /// create and preallocate the next one. A full disk fails here cleanly (not sticky), early.
    pub fn prepare_next_segment(&mut self) -> io::Result<()> {
        self.check_usable()?;
        if self.closing.is_some() {
            return Ok(()); // No file changes while a close is out: the next call prepares it.
        }
        let default = self.capacity_for(0);
        if self.spares.iter().any(|spare| spare.capacity >= default) {
            return Ok(());
        }
        Ok(self.prepare_spare(default)?)
    }

    /// [`SegmentLog::prepare_next_segment`] off the caller's thread: the next segment's
    /// preparation (create, preallocate, header, rename to `open-N`: a few to tens of
    /// milliseconds) as a request to [`SpareRequest::run`] elsewhere and hand back to
    /// [`SegmentLog::spare_ready`]. `None` when a spare is ready or being prepared, or while a
    /// segment is being closed (no file of the log changes meanwhile). A crash while it runs
    /// leaves a temporary file or an empty spare, which recovery removes or keeps as a spare.
    pub fn spare_request(&mut self) -> Result<Option<SpareRequest>, LogError> {
        self.check_usable()?;
        let capacity = self.capacity_for(0);
        if self.spare_preparing
            || self.closing.is_some()
            || self.spares.iter().any(|spare| spare.capacity >= capacity)
        {
            return Ok(None);
        }
        let counter = self.open_counter_next;
        self.open_counter_next += 1;
        self.spare_preparing = true;
        Ok(Some(SpareRequest {
            disk: Arc::clone(&self.disk),
            dir: self.dir.clone(),
            counter,
            capacity,
            file: None,
        }))
    }

    /// Takes back a [`SpareRequest`] with what its run returned: a prepared spare joins the
    /// others. A full disk changed nothing (the request removed its file); any other failure is
    /// a failed write: the log refuses changes until reopened.
    pub fn spare_ready(&mut self, request: SpareRequest, result: io::Result<()>) -> io::Result<()> {
        self.spare_preparing = false;
        let name = request.name();
        match (result, request.file) {
            (Ok(()), Some(file)) => {
                let spare = Spare {
                    counter: request.counter,
                    name,
                    file,
                    capacity: request.capacity,
                };
                if self.closing.is_some() {
                    self.spare_after_close = Some(spare);
                } else {
                    self.dir_sync_pending = true;
                    self.spares.push(spare);
                }
                Ok(())
            }
            (Err(error), _) if error.kind() == io::ErrorKind::StorageFull => {
                Err(LogError::io("preallocating segment", request.dir.join(name), error).into())
            }
            (result, _) => {
                let error = result.err().unwrap_or_else(|| io::Error::other("no file"));
                let error = LogError::io("preparing segment", request.dir.join(name), error);
                Ok(self.sticky(Err(error))?)
            }
        }
    }

    /// Makes the `count`-th mutating call from now (0 = the next one) fail, and every one after
    /// it, as a failed write would (sticky until reopened).
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_after(&mut self, count: u64) {
        self.faults.calls_left = Some(count);
    }

    /// Makes the `count`-th preallocation of a segment from now fail with `ENOSPC`, as on a
    /// full disk. Only that one fails; it is not sticky.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_preallocation_after(&mut self, count: u64) {
        self.faults.preallocations_left = Some(count);
    }

    /// Makes the log stop dead before its `count`-th file operation from now (create, rename or
    /// remove of a segment): tests reopen the directory then, to check that a crash at that
    /// instant leaves a log they can recover.
    #[cfg(any(test, feature = "testing"))]
    pub fn crash_before_file_operation(&mut self, count: u64) {
        self.faults.file_operations_left.set(Some(count));
    }

    /// Counts down to an injected crash before a file operation.
    fn file_operation(&self) -> Result<(), LogError> {
        #[cfg(any(test, feature = "testing"))]
        match self.faults.file_operations_left.get() {
            Some(0) => {
                return Err(LogError::io(
                    "injected crash before",
                    &self.dir,
                    io::Error::other("injected crash"),
                ))
            }
            Some(left) => self.faults.file_operations_left.set(Some(left - 1)),
            None => {}
        }
        Ok(())
    }

    /// Refuses changes after a failure (and counts down an injected one).
    fn check_usable(&mut self) -> Result<(), LogError> {
        #[cfg(any(test, feature = "testing"))]
        match self.faults.calls_left {
            Some(0) => self.failed = true,
            Some(left) => self.faults.calls_left = Some(left - 1),
            None => {}
        }
        if self.failed {
            return Err(LogError::Failed);
        }
        Ok(())
    }

    /// Runs `operation`; if it fails, the log refuses every later change.
    fn sticky<T>(&mut self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(error) = &result {
            log::error!("log write failed, refusing changes until reopened: {error}");
            self.failed = true;
        }
        result
    }

    fn preallocate(&mut self, file: &dyn DiskFile, len: u64) -> io::Result<()> {
        #[cfg(any(test, feature = "testing"))]
        match self.faults.preallocations_left {
            Some(0) => {
                self.faults.preallocations_left = None;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Some(left) => self.faults.preallocations_left = Some(left - 1),
            None => {}
        }
        file.allocate(len)
    }

    /// The capacity of a new segment that must hold a record of `record_bytes`: the configured
    /// segment size when the record fits in it, else just enough whole pages for it alone.
    fn capacity_for(&self, record_bytes: usize) -> usize {
        segment_capacity(self.options.segment_bytes, record_bytes, mmap::page_bytes())
    }

    /// Creates a segment file at `dir/name.tmp`: blocks preallocated, header and `body` (records
    /// copied from another segment) written, and, if `durable`, synced. Returns the file; the
    /// caller renames it. A spare needs no sync: the first `sync` of an entry in it flushes
    /// the header and the file's size with it, and recovery removes an all-zero spare.
    /// Fails cleanly (and removes the temporary file) when the disk is full; `Err((_, true))`
    /// means a write or sync failed, which is sticky.
    fn create_segment_file(
        &mut self,
        name: &str,
        capacity: usize,
        body: &[u8],
        durable: bool,
    ) -> Result<Arc<dyn DiskFile>, (LogError, bool)> {
        assert!(SEGMENT_HEADER_BYTES + body.len() <= capacity);
        assert!(capacity as u64 <= SEGMENT_BYTES_MAX);
        let temp_path = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        self.file_operation().map_err(|error| (error, true))?;
        let file = self
            .disk
            .open(&temp_path, OpenMode::CreateNew)
            .map_err(|error| (LogError::io("creating segment", &temp_path, error), false))?;
        if let Err(error) = self.preallocate(&*file, capacity as u64) {
            drop(file);
            let _ = self.disk.remove_file(&temp_path);
            return Err((
                LogError::io("preallocating segment", &temp_path, error),
                false,
            ));
        }
        let written = file
            .write_all_at(&segment::encode_segment_header(), 0)
            .and_then(|()| file.write_all_at(body, SEGMENT_HEADER_BYTES as u64))
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) });
        if let Err(error) = written {
            return Err((LogError::io("writing new segment", &temp_path, error), true));
        }
        Ok(file)
    }

    /// Prepares a spare segment of `capacity` bytes: created and renamed to `open-N`. The
    /// directory sync is left to [`SegmentLog::roll_over`], which does one for this rename and
    /// the closing of the full segment together, before the spare takes any entry.
    fn prepare_spare(&mut self, capacity: usize) -> Result<(), LogError> {
        let counter = self.open_counter_next;
        self.open_counter_next += 1;
        let name = format!("{OPEN_PREFIX}{counter}");
        let file = match self.create_segment_file(&name, capacity, &[], false) {
            Ok(file) => file,
            Err((error, sticky)) => {
                return if sticky {
                    self.sticky(Err(error))
                } else {
                    Err(error)
                }
            }
        };
        // Not filled with zeros, unlike a spare of `SpareRequest::run`: this runs on the
        // caller's thread when no spare was prepared in time, and writing a segment's worth of
        // zeros takes milliseconds. The segment's syncs then commit its extents as they go.
        let renamed = self.rename(&format!("{name}{TEMP_SUFFIX}"), &name);
        self.sticky(renamed)?;
        self.dir_sync_pending = true;
        self.spares.push(Spare {
            counter,
            name,
            file,
            capacity,
        });
        Ok(())
    }

    fn rename_and_sync(&self, from: &str, to: &str) -> Result<(), LogError> {
        self.rename(from, to)?;
        sync_dir_file(&*self.disk, &self.dir)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), LogError> {
        self.file_operation()?;
        let to_path = self.dir.join(to);
        self.disk
            .rename(&self.dir.join(from), &to_path)
            .map_err(|error| LogError::io("renaming segment", &to_path, error))
    }

    /// Makes sure spares exist for every new segment `entries` will need, so that appending them
    /// cannot run out of disk space half-way. Changes no entry; a failure is not sticky.
    fn prepare_for(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let mut free = self.open.as_ref().map(|open| open.capacity - open.end);
        // The common case, without allocating: the batch fits in the open segment.
        let batch_bytes: usize = entries
            .iter()
            .map(|entry| segment::record_bytes(entry.payload.len()))
            .sum();
        if free.is_some_and(|free| batch_bytes <= free) {
            return Ok(());
        }
        let mut needed: Vec<usize> = Vec::new();
        for entry in entries {
            let record = segment::record_bytes(entry.payload.len());
            match free {
                Some(bytes) if record <= bytes => free = Some(bytes - record),
                _ => {
                    needed.push(SEGMENT_HEADER_BYTES + record);
                    free = Some(self.capacity_for(record) - SEGMENT_HEADER_BYTES - record);
                }
            }
        }
        // Match the needs to spares in the same first-fit order `take_spare` will use.
        let mut used = vec![false; self.spares.len()];
        for need in needed {
            let found = self
                .spares
                .iter()
                .enumerate()
                .position(|(k, spare)| !used[k] && spare.capacity >= need);
            match found {
                Some(k) => used[k] = true,
                None => {
                    self.prepare_spare(self.capacity_for(need - SEGMENT_HEADER_BYTES))?;
                    used.push(true);
                }
            }
        }
        Ok(())
    }

    /// Closes the open segment: syncs it and renames it `FIRST-LAST`; the caller syncs the
    /// directory. Its map and offset index move to the cache, where recent entries are likely
    /// to be read again.
    fn close_open_segment(&mut self) -> Result<(), LogError> {
        let open = self.open.as_ref().expect("an open segment to close");
        let last = open
            .last()
            .expect("only segments holding entries are closed");
        let path = self.dir.join(&open.name);
        open.writer
            .flush(open.synced_end..open.end)
            .map_err(|error| LogError::io("syncing segment", &path, error))?;
        let name = closed_name(open.first, last);
        self.rename(&open.name, &name)?;
        self.dir_sync_pending = true;
        self.retire_open(name);
        Ok(())
    }

    /// Moves the open segment, durable whole and renamed `name`, to the closed ones. It is read
    /// again only by a lagging follower or a restart: its pages leave the process (the page
    /// cache keeps them for such a read), its map and offset index go to the cache.
    fn retire_open(&mut self, name: String) {
        let open = self.open.take().expect("an open segment to retire");
        let last = open
            .last()
            .expect("only segments holding entries are closed");
        open.writer.map().release(0..open.end);
        self.cache.borrow_mut().insert(
            open.first,
            Arc::clone(open.writer.map()),
            open.offsets.into(),
        );
        self.closed.push(ClosedSegment {
            first: open.first,
            last,
            name,
        });
    }

    /// Makes the spare at `position` the open segment, mapped; on failure it stays a spare.
    fn open_spare(&mut self, position: usize) -> io::Result<()> {
        let spare = self.spares.remove(position);
        // The header is written: frozen, so that the writer keeps it (past `frozen` it writes
        // over zeros).
        let writer =
            match SegmentMap::open_writable(&spare.file, spare.capacity, SEGMENT_HEADER_BYTES) {
                Ok((_, writer)) => writer,
                Err(error) => {
                    self.spares.insert(position, spare);
                    return Err(error);
                }
            };
        self.open = Some(OpenSegment {
            counter: spare.counter,
            name: spare.name,
            file: spare.file,
            writer,
            capacity: spare.capacity,
            first: self.last_index.next(),
            offsets: Vec::new(),
            end: SEGMENT_HEADER_BYTES,
            synced_end: SEGMENT_HEADER_BYTES,
            released_end: 0,
        });
        Ok(())
    }

    /// Makes a spare that can hold a record of `record_bytes` the open segment, closing (or
    /// returning to the spares, if empty) the current one.
    fn roll_over(&mut self, record_bytes: usize) -> Result<(), LogError> {
        if let Some(open) = &self.open {
            if open.offsets.is_empty() {
                let open = self.open.take().expect("checked above");
                self.spares.push(Spare {
                    counter: open.counter,
                    name: open.name,
                    file: open.file,
                    capacity: open.capacity,
                });
            } else {
                self.close_open_segment()?;
            }
        }
        // One directory sync makes both the closed segment's new name and the spare's name
        // durable, before any entry goes into the spare.
        if self.dir_sync_pending {
            sync_dir_file(&*self.disk, &self.dir)?;
            self.dir_sync_pending = false;
            if let Some(last) = self.closed.last() {
                self.durable_index = self.durable_index.max(last.last);
            }
        }
        let need = SEGMENT_HEADER_BYTES + record_bytes;
        let position = self
            .spares
            .iter()
            .position(|spare| spare.capacity >= need)
            .expect("prepare_for made a spare for every new segment");
        let path = self.dir.join(&self.spares[position].name);
        self.open_spare(position)
            .map_err(|error| LogError::io("mapping segment", &path, error))
    }

    /// Stages one entry in the open segment, which has room for it; `flush_written` writes it
    /// to the file and makes it readable.
    fn write_entry(&mut self, entry: &Entry) {
        let open = self.open.as_mut().expect("an open segment with room");
        let record = segment::record_bytes(entry.payload.len());
        assert!(open.end + record <= open.capacity);
        let header =
            segment::encode_record_header(entry.index, entry.term, entry.kind, &entry.payload);
        let offset = open.end;
        open.writer.write(offset, &[&header, &entry.payload]);
        // The padding is already zero: nothing was ever written past `end`. The entry is
        // frozen (readable) once the batch is flushed (`flush_written`).
        if open.offsets.is_empty() {
            open.first = entry.index;
        }
        open.offsets
            .push(u32::try_from(offset).expect("segments are smaller than 4 GiB"));
        open.end = offset + record;
        self.runs.push(entry.index, entry.term);
        self.last_index = entry.index;
    }

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        self.check_usable()?;
        if self.close_pending() {
            return Err(LogError::Closing);
        }
        let mut expected = self.last_index.next();
        for entry in entries {
            assert_eq!(
                entry.index, expected,
                "appended entries must be contiguous and follow the last index"
            );
            if entry.payload.len() as u64 > u64::from(PAYLOAD_BYTES_MAX) {
                return Err(LogError::PayloadTooLarge {
                    index: entry.index,
                    bytes: entry.payload.len() as u64,
                });
            }
            expected = expected.next();
        }
        let batch: usize = entries
            .iter()
            .map(|entry| segment::record_bytes(entry.payload.len()))
            .sum();
        let need = SEGMENT_HEADER_BYTES + batch;
        let full = self
            .open
            .as_ref()
            .is_some_and(|open| !open.offsets.is_empty() && open.end + batch > open.capacity);
        if self.background_close && full && need <= self.capacity_for(0) {
            // The spare first: the close's directory sync makes its name durable.
            if !self.spares.iter().any(|spare| spare.capacity >= need) {
                self.prepare_spare(self.capacity_for(0))?;
            }
            self.close_wanted = Some(need);
            return Err(LogError::Closing);
        }
        self.prepare_for(entries)?;
        for entry in entries {
            let record = segment::record_bytes(entry.payload.len());
            let fits = self
                .open
                .as_ref()
                .is_some_and(|open| open.end + record <= open.capacity);
            if !fits {
                let flushed = self.flush_written();
                self.sticky(flushed)?;
                let rolled = self.roll_over(record);
                self.sticky(rolled)?;
            }
            self.write_entry(entry);
            if self
                .open
                .as_ref()
                .is_some_and(|open| open.writer.staged_bytes() >= mmap::STAGING_FLUSH_BYTES)
            {
                let flushed = self.flush_written();
                self.sticky(flushed)?;
            }
        }
        let flushed = self.flush_written();
        self.sticky(flushed)
    }

    /// Writes the entries staged in the open segment to its file (one `pwrite`) and makes
    /// them readable.
    /// On failure the entries not written are forgotten (they were never readable), and
    /// the caller makes the failure sticky.
    fn flush_written(&mut self) -> Result<(), LogError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let Some(from) = open.writer.staged_from() else {
            return Ok(());
        };
        if let Err(error) = open.writer.flush_staged() {
            let kept = open
                .offsets
                .partition_point(|&offset| (offset as usize) < from);
            let forgotten = (open.offsets.len() - kept) as u64;
            open.offsets.truncate(kept);
            open.end = from;
            self.last_index = LogIndex(self.last_index.0 - forgotten);
            self.runs.truncate_after(self.last_index);
            return Err(LogError::io(
                "writing entries",
                self.dir.join(&open.name),
                error,
            ));
        }
        open.writer.freeze(open.end);
        Ok(())
    }

    fn sync_entries(&mut self) -> Result<(), LogError> {
        let request = self.sync_begin()?;
        let result = request.run();
        self.sync_end(request, result)?;
        assert_eq!(self.durable_index, self.last_index);
        Ok(())
    }

    /// Begins a sync of every entry appended so far: the returned request is run by anyone
    /// ([`SyncRequest::run`], on any thread, while the log goes on changing) and handed back
    /// to [`SegmentLog::sync_end`]. Refused after a failure, like any change.
    pub fn sync_begin(&mut self) -> Result<SyncRequest, LogError> {
        self.check_usable()?;
        if self.closing.is_some() {
            return Err(LogError::Closing);
        }
        let close = match (self.close_wanted, self.open.as_ref()) {
            (Some(need), Some(open)) => {
                let last = open.last().expect("only a segment with entries is closed");
                self.file_operation()?;
                self.closing = Some(need);
                self.close_wanted = None;
                Some(SegmentClose {
                    disk: Arc::clone(&self.disk),
                    dir: self.dir.clone(),
                    from: open.name.clone(),
                    to: closed_name(open.first, last),
                    first: open.first,
                    last,
                })
            }
            _ => {
                self.close_wanted = None;
                None
            }
        };
        let flush = self
            .open
            .as_ref()
            .filter(|open| open.synced_end < open.end)
            .map(|open| SyncFlush {
                map: Arc::clone(open.writer.map()),
                range: open.synced_end..open.end,
                path: self.dir.join(&open.name),
            });
        Ok(SyncRequest {
            flush,
            close,
            last: self.last_index,
            truncations: self.truncations,
        })
    }

    /// Ends a sync begun by [`SegmentLog::sync_begin`], with the outcome of its run, and
    /// returns the durable index. A failed run is sticky (the page cache cannot be trusted
    /// after a failed flush). The request's entries count as durable only if the log was not
    /// truncated since it began; those entries that survived a truncation were made durable by
    /// it anyway.
    pub fn sync_end(
        &mut self,
        request: SyncRequest,
        result: io::Result<()>,
    ) -> Result<LogIndex, LogError> {
        if let Err(error) = result {
            let path = request
                .flush
                .map_or_else(|| self.dir.clone(), |flush| flush.path);
            return self.sticky(Err(LogError::io("syncing segment", path, error)));
        }
        if self.failed {
            return Err(LogError::Failed);
        }
        if let Some(close) = &request.close {
            self.close_end(close);
        }
        if request.truncations == self.truncations {
            assert!(
                request.last <= self.last_index,
                "without a truncation the log only grows"
            );
            if let (Some(flush), Some(open)) = (&request.flush, self.open.as_mut()) {
                if Arc::ptr_eq(&flush.map, open.writer.map()) {
                    open.synced_end = open.synced_end.max(flush.range.end);
                    // Bounded residency: once twice `OPEN_RESIDENT_BYTES` of durable bytes are
                    // mapped in, all but the newest `OPEN_RESIDENT_BYTES` of them leave the
                    // process. A flush still running over some of them (a coalesced sync
                    // begun earlier) is unaffected: dropped pages stay dirty in the page cache.
                    if open.synced_end - open.released_end >= 2 * OPEN_RESIDENT_BYTES {
                        let end = page_floor(open.synced_end - OPEN_RESIDENT_BYTES);
                        open.writer.map().release(open.released_end..end);
                        open.released_end = end;
                    }
                }
            }
            self.durable_index = self.durable_index.max(request.last);
        }
        Ok(self.durable_index)
    }

    /// Ends the close a sync request ran: the open segment joins the closed ones under its new
    /// name, durable whole, and a spare the directory sync covered becomes the open segment.
    fn close_end(&mut self, close: &SegmentClose) {
        let need = self.closing.take().expect("a close was out");
        let open = self
            .open
            .as_ref()
            .expect("the closing segment stays open until its end");
        assert_eq!((open.first, open.last()), (close.first, Some(close.last)));
        self.retire_open(close.to.clone());
        // Nothing was renamed while the close was out: its directory sync covered every spare.
        self.dir_sync_pending = false;
        self.durable_index = self.durable_index.max(close.last);
        if let Some(position) = self.spares.iter().position(|spare| spare.capacity >= need) {
            // On failure the next append maps it again and reports the failure.
            if let Err(error) = self.open_spare(position) {
                log::warn!("mapping the next segment: {error}");
            }
        }
        // A spare prepared elsewhere and handed back meanwhile takes entries only after a
        // directory sync of its own (the next close's, or a rollover's).
        if let Some(spare) = self.spare_after_close.take() {
            self.spares.push(spare);
            self.dir_sync_pending = true;
        }
    }

    /// Closes full segments in the background: an append that does not fit in the open
    /// segment is refused ([`LogError::Closing`]) and the next [`SegmentLog::sync_begin`]
    /// returns a request that also renames the full segment and syncs the directory; appends
    /// are taken again once that request has ended (see "Closing in the background").
    pub fn set_background_close(&mut self, on: bool) {
        self.background_close = on;
    }

    /// Leaves the deletion of the segments a compaction covers to the caller
    /// ([`SegmentLog::take_removals`]): the compaction point is durable on return, as always,
    /// and the files it covers are only space, which recovery gives back if a crash comes
    /// first (see "Crash safety, step by step").
    pub fn set_background_removal(&mut self, on: bool) {
        self.background_removal = on;
    }

    /// The segment files compactions took out of the log since the last call, to delete (and
    /// then sync the directory) on another thread; `None` if there are none.
    pub fn take_removals(&mut self) -> Option<Removal> {
        if self.removals.is_empty() {
            return None;
        }
        let paths = std::mem::take(&mut self.removals);
        Some(Removal::new(
            Arc::clone(&self.disk),
            self.dir.clone(),
            paths,
        ))
    }

    /// A full segment waits to be closed by the next sync request, or is being closed by the
    /// one out: appends are refused meanwhile.
    pub fn close_pending(&self) -> bool {
        self.close_wanted.is_some() || self.closing.is_some()
    }

    /// A sync request that closes the open segment is out.
    pub fn closing(&self) -> bool {
        self.closing.is_some()
    }

    fn truncate_entries(&mut self, index: LogIndex) -> Result<(), LogError> {
        assert!(
            index.0 + 1 >= self.first_index.0,
            "truncating compacted entries"
        );
        self.check_usable()?;
        if self.closing.is_some() {
            return Err(LogError::Closing);
        }
        if index >= self.last_index {
            return Ok(());
        }
        // The open segment changes: a close it wanted is decided again by the next append.
        self.close_wanted = None;
        // Syncs begun before this no longer describe the log, even if this fails half-way.
        self.truncations += 1;
        // The segment holding both `index` and `index + 1`, if any, must be cut: build its
        // replacement first, which is the only step that needs new disk space.
        let open_first = self
            .open
            .as_ref()
            .and_then(|open| open.last().map(|_| open.first));
        let cut_open = open_first.is_some_and(|first| first <= index);
        let cut_closed = if cut_open {
            None
        } else {
            self.closed
                .iter()
                .position(|segment| segment.first <= index && index < segment.last)
        };
        // The kept records are copied straight from the map (held by an `Arc`, so no borrow of
        // `self`): no buffer as large as a segment.
        let kept = if cut_open {
            let open = self.open.as_ref().expect("cut_open");
            let kept_end = open.offset_of(index.next());
            let offsets = open.offsets[..(index.0 + 1 - open.first.0) as usize].to_vec();
            let map = Arc::clone(open.writer.map());
            Some((
                open.name.clone(),
                open.counter,
                open.first,
                offsets,
                map,
                kept_end,
            ))
        } else if let Some(k) = cut_closed {
            let segment = self.closed[k].clone();
            let (map, offsets) = self.closed_map(k)?;
            let kept = (index.0 + 1 - segment.first.0) as usize;
            let kept_end = offsets[kept] as usize;
            let counter = self.open_counter_next;
            self.open_counter_next += 1;
            let name = format!("{OPEN_PREFIX}{counter}");
            let offsets = offsets[..kept].to_vec();
            Some((name, counter, segment.first, offsets, map, kept_end))
        } else {
            None
        };
        let mut replacement = None;
        if let Some((name, counter, first, offsets, map, kept_end)) = kept {
            let body = map.slice(SEGMENT_HEADER_BYTES..kept_end);
            let capacity = self.capacity_for(body.len());
            match self.create_segment_file(&name, capacity, body, true) {
                Ok(file) => {
                    replacement = Some(Replacement {
                        name,
                        counter,
                        first,
                        offsets,
                        body_bytes: body.len(),
                        file,
                        capacity,
                    })
                }
                Err((error, true)) => return self.sticky(Err(error)),
                Err((error, false)) => return Err(error),
            }
        }
        let result = self.truncate_files(index, cut_closed, replacement);
        self.sticky(result)
    }

    /// The file operations of a truncation, in crash-safe order; see the module documentation.
    fn truncate_files(
        &mut self,
        index: LogIndex,
        cut_closed: Option<usize>,
        replacement: Option<Replacement>,
    ) -> Result<(), LogError> {
        // 1. The open segment, unless it is the one being cut: all its entries go.
        let cut_open = replacement.is_some() && cut_closed.is_none();
        if !cut_open {
            if let Some(open) = self.open.take() {
                if open.offsets.is_empty() {
                    self.spares.push(Spare {
                        counter: open.counter,
                        name: open.name,
                        file: open.file,
                        capacity: open.capacity,
                    });
                } else {
                    self.file_operation()?;
                    remove_file(&*self.disk, &self.dir.join(&open.name))?;
                    sync_dir_file(&*self.disk, &self.dir)?;
                }
            }
        }
        // 2. Closed segments wholly after `index`, newest first, each removal durable before the
        //    next, so that a crash never leaves a gap.
        while let Some(segment) = self.closed.last() {
            if segment.first <= index {
                break;
            }
            self.file_operation()?;
            let segment = self.closed.pop().expect("checked above");
            self.cache.borrow_mut().remove(segment.first);
            remove_file(&*self.disk, &self.dir.join(&segment.name))?;
            sync_dir_file(&*self.disk, &self.dir)?;
        }
        // 3. The cut segment is replaced by its kept prefix. A closed one first becomes an open
        //    one under the replacement's name, so no two files ever claim the same entries.
        if let Some(Replacement {
            name,
            counter,
            first,
            offsets,
            body_bytes,
            file,
            capacity,
        }) = replacement
        {
            if let Some(k) = cut_closed {
                assert_eq!(k + 1, self.closed.len(), "later segments are gone");
                let segment = self.closed.pop().expect("the cut segment");
                self.cache.borrow_mut().remove(segment.first);
                self.rename_and_sync(&segment.name, &name)?;
            }
            self.rename_and_sync(&format!("{name}{TEMP_SUFFIX}"), &name)?;
            let end = SEGMENT_HEADER_BYTES + body_bytes;
            let path = self.dir.join(&name);
            let (_, writer) = SegmentMap::open_writable(&file, capacity, end)
                .map_err(|error| LogError::io("mapping segment", &path, error))?;
            self.open = Some(OpenSegment {
                counter,
                name,
                file,
                writer,
                capacity,
                first,
                offsets,
                end,
                synced_end: end,
                released_end: 0,
            });
        }
        self.runs.truncate_after(index);
        self.last_index = index;
        // Every remaining entry is in a closed segment or in the synced replacement.
        self.durable_index = index;
        self.check_invariants();
        Ok(())
    }

    fn compact_entries(&mut self, index: LogIndex, term: Term) -> Result<(), LogError> {
        if self.closing.is_some() {
            return Err(LogError::Closing);
        }
        self.check_usable()?;
        if index < self.first_index {
            return Ok(());
        }
        if index <= self.last_index {
            assert_eq!(
                self.runs.term(index),
                term,
                "compaction point term disagrees with the log"
            );
        }
        let hard_state = self.metadata.current().hard_state;
        let crash = self.file_operation();
        self.sticky(crash)?;
        // A save that could not write (a full disk) changes nothing: not sticky.
        match self.metadata.save(hard_state, index, term) {
            Ok(()) => {}
            Err((error, true)) => return self.sticky(Err(error)),
            Err((error, false)) => return Err(error),
        }
        // The compaction is durable now; removing the files it covers only frees space, and
        // recovery finishes it if a crash interrupts it.
        self.first_index = index.next();
        if index >= self.last_index {
            self.last_index = index;
            self.runs.clear();
        } else {
            self.runs.compact(self.first_index);
        }
        self.durable_index = self.durable_index.max(index);
        let mut removed = Vec::new();
        while self
            .closed
            .first()
            .is_some_and(|segment| segment.last <= index)
        {
            let segment = self.closed.remove(0);
            self.cache.borrow_mut().remove(segment.first);
            removed.push(segment.name);
        }
        if self
            .open
            .as_ref()
            .and_then(OpenSegment::last)
            .is_some_and(|last| last <= index)
        {
            let open = self.open.take().expect("checked above");
            removed.push(open.name);
        }
        if self.background_removal {
            let dir = &self.dir;
            self.removals
                .extend(removed.iter().map(|name| dir.join(name)));
            self.check_invariants();
            return Ok(());
        }
        for name in &removed {
            let crash = self.file_operation();
            self.sticky(crash)?;
            let path = self.dir.join(name);
            if let Err(error) = remove_file(&*self.disk, &path) {
                log::warn!(
                    "compaction left {} behind, to remove at next open: {error}",
                    path.display()
                );
            }
        }
        if !removed.is_empty() {
            let synced = sync_dir_file(&*self.disk, &self.dir);
            self.sticky(synced)?;
        }
        self.check_invariants();
        Ok(())
    }

    fn save_hard_state_durably(&mut self, hard_state: HardState) -> Result<(), LogError> {
        self.check_usable()?;
        assert!(
            hard_state.term >= self.metadata.current().hard_state.term,
            "the term never goes backwards"
        );
        let (compacted_index, compacted_term) = self.compacted();
        // A save that could not write (a full disk) changes nothing: not sticky, the host
        // may try again (and must not act on the unsaved term or vote meanwhile).
        match self
            .metadata
            .save(hard_state, compacted_index, compacted_term)
        {
            Ok(()) => Ok(()),
            Err((error, true)) => self.sticky(Err(error)),
            Err((error, false)) => Err(error),
        }
    }

    /// The map and offset index of closed segment `k`, mapping it if needed.
    fn closed_map(&self, k: usize) -> Result<(Arc<SegmentMap>, Arc<[u32]>), LogError> {
        let segment = &self.closed[k];
        if let Some(found) = self.cache.borrow_mut().get(segment.first) {
            return Ok(found);
        }
        let path = self.dir.join(&segment.name);
        let file = self
            .disk
            .open(&path, OpenMode::Read)
            .map_err(|error| LogError::io("opening segment", &path, error))?;
        let map = SegmentMap::open_read_only(&*file)
            .map_err(|error| LogError::io("mapping segment", &path, error))?;
        let bytes = map.slice(0..map.len());
        segment::check_segment_header(bytes)
            .map_err(|reason| LogError::corrupt(&path, 0, reason))?;
        let count = (segment.last.0 - segment.first.0 + 1) as usize;
        let mut offsets = Vec::with_capacity(count);
        let mut offset = SEGMENT_HEADER_BYTES;
        for k in 0..count {
            let index = LogIndex(segment.first.0 + k as u64);
            if offset + RECORD_HEADER_BYTES > bytes.len() {
                return Err(LogError::corrupt(
                    &path,
                    offset as u64,
                    "segment ends early",
                ));
            }
            let record = segment::decode_record_fields(
                &bytes[offset..offset + RECORD_HEADER_BYTES],
                offset,
                bytes.len(),
            )
            .map_err(|reason| LogError::corrupt(&path, offset as u64, reason))?;
            if record.index != index {
                return Err(LogError::corrupt(
                    &path,
                    offset as u64,
                    "unexpected entry index",
                ));
            }
            offsets.push(u32::try_from(offset).expect("segments are smaller than 4 GiB"));
            offset = record.end;
        }
        let offsets: Arc<[u32]> = offsets.into();
        self.cache
            .borrow_mut()
            .insert(segment.first, Arc::clone(&map), Arc::clone(&offsets));
        Ok((map, offsets))
    }

    /// Reads the entries `low..high` of one segment into `out`, respecting the byte budget.
    /// Returns false once the budget stops the read.
    #[allow(clippy::too_many_arguments)]
    fn read_segment(
        &self,
        name: &str,
        map: &Arc<SegmentMap>,
        offsets: &[u32],
        segment_first: LogIndex,
        range: (LogIndex, LogIndex),
        budget: &mut ReadBudget,
        out: &mut Vec<Entry>,
    ) -> Result<bool, LogError> {
        for index in range.0 .0..range.1 .0 {
            let index = LogIndex(index);
            let offset = offsets[(index.0 - segment_first.0) as usize] as usize;
            let entry = read_record(map, offset, index)
                .map_err(|reason| LogError::corrupt(self.dir.join(name), offset as u64, reason))?;
            if !budget.admit(entry.payload.len() as u64) {
                return Ok(false);
            }
            out.push(entry);
        }
        Ok(true)
    }

    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogError> {
        let mut budget = ReadBudget {
            bytes: 0,
            bytes_max,
            count: 0,
        };
        let mut index = low;
        while index < high {
            if let Some(open) = self
                .open
                .as_ref()
                .filter(|open| open.last().is_some() && open.first <= index)
            {
                self.read_segment(
                    &open.name,
                    open.writer.map(),
                    &open.offsets,
                    open.first,
                    (index, high),
                    &mut budget,
                    out,
                )?;
                return Ok(());
            }
            let k = self.closed.partition_point(|segment| segment.last < index);
            let segment = &self.closed[k];
            assert!(segment.first <= index, "the log is contiguous");
            let segment_high = high.min(segment.last.next());
            let (map, offsets) = self.closed_map(k)?;
            let more = self.read_segment(
                &segment.name,
                &map,
                &offsets,
                segment.first,
                (index, segment_high),
                &mut budget,
                out,
            )?;
            if !more {
                return Ok(());
            }
            index = segment_high;
        }
        Ok(())
    }

    /// Checks the invariants between the fields; O(segments), so after each structural change
    /// only, never per entry.
    fn check_invariants(&self) {
        assert!(self.first_index.0 >= 1);
        assert!(self.last_index.0 + 1 >= self.first_index.0);
        assert!(self.durable_index <= self.last_index);
        assert_eq!(
            self.first_index,
            self.metadata.current().compacted_index.next()
        );
        for pair in self.closed.windows(2) {
            assert_eq!(
                pair[1].first,
                pair[0].last.next(),
                "closed segments are contiguous"
            );
        }
        let mut last = self.closed.last().map(|segment| segment.last);
        if let Some(open) = &self.open {
            assert!(open.synced_end <= open.end);
            assert!(open.end <= open.capacity);
            assert!(open.released_end <= open.synced_end);
            if let Some(open_last) = open.last() {
                if let Some(closed_last) = last {
                    assert_eq!(open.first, closed_last.next(), "open continues closed");
                }
                last = Some(open_last);
            }
        }
        match last {
            Some(last) => {
                assert_eq!(last, self.last_index);
                let first = self
                    .closed
                    .first()
                    .map(|segment| segment.first)
                    .or(self.open.as_ref().map(|open| open.first))
                    .expect("some segment holds entries");
                assert!(
                    first <= self.first_index,
                    "no gap after the compaction point"
                );
            }
            None => assert_eq!(self.last_index.next(), self.first_index, "empty log"),
        }
    }
}

impl LogRead for SegmentLog {
    fn first_index(&self) -> LogIndex {
        self.first_index
    }

    fn last_index(&self) -> LogIndex {
        self.last_index
    }

    fn term(&self, index: LogIndex) -> io::Result<Option<Term>> {
        if index.0 + 1 == self.first_index.0 {
            return Ok(Some(self.metadata.current().compacted_term));
        }
        if index < self.first_index || index > self.last_index {
            return Ok(None);
        }
        Ok(Some(self.runs.term(index)))
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
        out: &mut Vec<Entry>,
    ) -> io::Result<()> {
        assert!(
            self.first_index <= low,
            "entries({low}..{high}) below the first index"
        );
        assert!(low <= high);
        assert!(
            high <= self.last_index.next(),
            "entries({low}..{high}) beyond the last index"
        );
        Ok(self.read_entries(low, high, bytes_max, out)?)
    }
}

impl LogStore for SegmentLog {
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        Ok(self.append_entries(entries)?)
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(self.sync_entries()?)
    }

    fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    fn truncate_after(&mut self, index: LogIndex) -> io::Result<()> {
        Ok(self.truncate_entries(index)?)
    }

    fn compact_through(&mut self, index: LogIndex, term: Term) -> io::Result<()> {
        Ok(self.compact_entries(index, term)?)
    }

    fn hard_state(&self) -> HardState {
        self.metadata.current().hard_state
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        Ok(self.save_hard_state_durably(hard_state)?)
    }
}

impl fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("first_index", &self.first_index)
            .field("last_index", &self.last_index)
            .field("durable_index", &self.durable_index)
            .field("closed_segments", &self.closed.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The `bytes_max` rule of [`LogRead::entries`]: entries are taken while their payload bytes
/// stay within the budget, but the first one always.
struct ReadBudget {
    bytes: u64,
    bytes_max: u64,
    count: u64,
}

impl ReadBudget {
    fn admit(&mut self, payload_bytes: u64) -> bool {
        let bytes = self.bytes.saturating_add(payload_bytes);
        if self.count > 0 && bytes > self.bytes_max {
            return false;
        }
        self.bytes = bytes;
        self.count += 1;
        true
    }
}

/// Reads and checks (crc included) the record of `index` at `offset` of `map`; the error says
/// which check failed (the caller names the file: no allocation on the read path).
fn read_record(
    map: &Arc<SegmentMap>,
    offset: usize,
    index: LogIndex,
) -> Result<Entry, &'static str> {
    let frozen = map.frozen();
    if offset + RECORD_HEADER_BYTES > frozen {
        return Err("record past the end");
    }
    let header = map.slice(offset..offset + RECORD_HEADER_BYTES);
    let record = segment::decode_record_fields(header, offset, frozen)?;
    if record.index != index {
        return Err("unexpected entry index");
    }
    let range = record.payload_start..record.payload_start + record.payload_len;
    if !segment::record_crc_matches(header, map.slice(range.clone())) {
        return Err("crc mismatch");
    }
    Ok(Entry {
        index,
        term: record.term,
        kind: record.kind,
        payload: Payload::from_map(Arc::clone(map), range),
    })
}

/// The terms of the entries in memory, one run per term change: O(1) for the last run (the
/// common case), a binary search otherwise. Never maps a segment.
#[derive(Debug, Default)]
struct TermRuns {
    /// `(first index, term)`: the entries from `first index` up to the next run's first index
    /// have `term`. Invariant: first indexes strictly increase.
    runs: Vec<(LogIndex, Term)>,
}

impl TermRuns {
    fn push(&mut self, index: LogIndex, term: Term) {
        match self.runs.last() {
            Some(&(first, _)) if first >= index => panic!("term runs out of order"),
            Some(&(_, last_term)) if last_term == term => {}
            _ => self.runs.push((index, term)),
        }
    }

    fn extend(&mut self, other: &TermRuns) {
        for &(index, term) in &other.runs {
            self.push(index, term);
        }
    }

    /// The term of `index`, which the caller knows is in the log.
    fn term(&self, index: LogIndex) -> Term {
        let &(first, term) = self.runs.last().expect("the log holds entries");
        if index >= first {
            return term;
        }
        let position = self.runs.partition_point(|&(first, _)| first <= index);
        assert!(position > 0, "index {index} before the first term run");
        self.runs[position - 1].1
    }

    fn truncate_after(&mut self, index: LogIndex) {
        while self.runs.last().is_some_and(|&(first, _)| first > index) {
            self.runs.pop();
        }
    }

    /// Forgets the runs before `first`, the new first index.
    fn compact(&mut self, first: LogIndex) {
        let position = self.runs.partition_point(|&(start, _)| start <= first);
        if position > 1 {
            self.runs.drain(..position - 1);
        }
        if let Some(run) = self.runs.first_mut() {
            run.0 = run.0.max(first);
        }
    }

    fn clear(&mut self) {
        self.runs.clear();
    }
}

/// The closed segments currently mapped, least recently used evicted first.
/// Invariant: `slots.len() <= capacity`, and `bytes <= bytes_max` unless one slot is left.
struct MapCache {
    slots: Vec<CachedMap>,
    capacity: usize,
    /// The mapped bytes of every slot.
    bytes: u64,
    bytes_max: u64,
    clock: u64,
}

struct CachedMap {
    first: LogIndex,
    map: Arc<SegmentMap>,
    offsets: Arc<[u32]>,
    used: u64,
}

impl MapCache {
    fn new(capacity: usize, bytes_max: u64) -> MapCache {
        MapCache {
            slots: Vec::with_capacity(capacity + 1),
            capacity,
            bytes: 0,
            bytes_max,
            clock: 0,
        }
    }

    fn get(&mut self, first: LogIndex) -> Option<(Arc<SegmentMap>, Arc<[u32]>)> {
        self.clock += 1;
        let slot = self.slots.iter_mut().find(|slot| slot.first == first)?;
        slot.used = self.clock;
        Some((Arc::clone(&slot.map), Arc::clone(&slot.offsets)))
    }

    fn insert(&mut self, first: LogIndex, map: Arc<SegmentMap>, offsets: Arc<[u32]>) {
        self.remove(first);
        self.clock += 1;
        self.bytes += map.len() as u64;
        self.slots.push(CachedMap {
            first,
            map,
            offsets,
            used: self.clock,
        });
        // Bounded: each round unmaps one slot, and the one just inserted (the newest) stays.
        while self.slots.len() > self.capacity
            || (self.bytes > self.bytes_max && self.slots.len() > 1)
        {
            let oldest = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, slot)| slot.used)
                .map(|(k, _)| k)
                .expect("not empty");
            let evicted = self.slots.swap_remove(oldest);
            self.bytes -= evicted.map.len() as u64;
        }
        assert!(self.slots.len() <= self.capacity);
        assert!(self.bytes <= self.bytes_max || self.slots.len() == 1);
    }

    fn remove(&mut self, first: LogIndex) {
        let bytes = &mut self.bytes;
        self.slots.retain(|slot| {
            if slot.first == first {
                *bytes -= slot.map.len() as u64;
            }
            slot.first != first
        });
    }
}

/// An open segment as recovery found it.
struct RecoveredOpen {
    counter: u64,
    name: String,
    file: Arc<dyn DiskFile>,
    capacity: usize,
    first: LogIndex,
    offsets: Vec<u32>,
    runs: TermRuns,
    end: usize,
}

impl RecoveredOpen {
    fn last(&self) -> Option<LogIndex> {
        (!self.offsets.is_empty()).then(|| LogIndex(self.first.0 + self.offsets.len() as u64 - 1))
    }
}

/// Checks that a segment starting at `first` continues the log: right after the previous
/// segment, or, for the first segment, at or before the first index after the compaction point.
fn check_continues(
    path: &Path,
    expected: Option<LogIndex>,
    first: LogIndex,
    compacted_index: LogIndex,
) -> Result<(), LogError> {
    let ok = match expected {
        Some(expected) => first == expected,
        None => first <= compacted_index.next(),
    };
    if !ok {
        return Err(LogError::Gap {
            path: path.to_path_buf(),
            expected: expected.unwrap_or(compacted_index.next()),
            found: first,
        });
    }
    Ok(())
}

/// Checks every record of the closed segment at `path`, which must hold exactly `first..=last`
/// and nothing after; returns the term runs of its entries after `compacted_index`.
fn recover_closed(
    disk: &dyn Disk,
    path: &Path,
    first: LogIndex,
    last: LogIndex,
    compacted_index: LogIndex,
) -> Result<TermRuns, LogError> {
    let file = disk
        .open(path, OpenMode::Read)
        .map_err(|error| LogError::io("opening segment", path, error))?;
    let len = file
        .size()
        .map_err(|error| LogError::io("reading segment size", path, error))?;
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Err(LogError::corrupt(path, 0, "shorter than a segment header"));
    }
    if len > SEGMENT_BYTES_MAX {
        // Never mapped whole: no segment is that large, and a 32-bit process could not map it.
        return Err(LogError::corrupt(path, 0, "larger than any segment"));
    }
    let map = SegmentMap::open_read_only(&*file)
        .map_err(|error| LogError::io("mapping segment", path, error))?;
    let bytes = map.slice(0..map.len());
    segment::check_segment_header(bytes).map_err(|reason| LogError::corrupt(path, 0, reason))?;
    let mut runs = TermRuns::default();
    let mut first_seen = None;
    let scan = segment::scan(bytes, |record| {
        if first_seen.is_none() {
            first_seen = Some(record.index);
        }
        if first_seen == Some(first) && record.index > compacted_index {
            runs.push(record.index, record.term);
        }
    });
    if let Stop::Invalid { offset, reason } = scan.stop {
        return Err(LogError::corrupt(path, offset as u64, reason));
    }
    if scan.first != Some(first) || scan.last != Some(last) {
        let offset = if scan.first != Some(first) {
            SEGMENT_HEADER_BYTES
        } else {
            scan.end
        };
        return Err(LogError::corrupt(
            path,
            offset as u64,
            format!(
                "holds entries {:?}..={:?}, but its name says {first}..={last}",
                scan.first.map(|i| i.0),
                scan.last.map(|i| i.0)
            ),
        ));
    }
    if !scan.tail_zero {
        return Err(LogError::corrupt(
            path,
            scan.end as u64,
            "bytes after the last entry",
        ));
    }
    Ok(runs)
}

/// Recovers the open segment at `path`: checks its header, finds its valid records, and zeroes
/// a torn tail (with a warning) so that nothing stale can ever follow a later append. `None`
/// for a file of zeros (or empty): a spare whose preparation was cut short.
fn recover_open(
    disk: &dyn Disk,
    path: &Path,
    counter: u64,
    name: String,
    compacted_index: LogIndex,
) -> Result<Option<RecoveredOpen>, LogError> {
    let file = disk
        .open(path, OpenMode::Write)
        .map_err(|error| LogError::io("opening segment", path, error))?;
    let len = file
        .size()
        .map_err(|error| LogError::io("reading segment size", path, error))?;
    if len > SEGMENT_BYTES_MAX {
        return Err(LogError::corrupt(path, 0, "larger than any segment"));
    }
    let capacity = usize::try_from(len).map_err(|_| LogError::corrupt(path, 0, "too large"))?;
    if capacity == 0 {
        // A spare whose preparation a crash cut short. Not mapped: POSIX `mmap` refuses a zero
        // length (memmap2 maps one byte instead, which qemu-user refuses with 64 KiB pages).
        return Ok(None);
    }
    let map = SegmentMap::open_read_only(&*file)
        .map_err(|error| LogError::io("mapping segment", path, error))?;
    let bytes = map.slice(0..map.len());
    if let Err(reason) = segment::check_segment_header(bytes) {
        if segment::last_nonzero(bytes, 0).is_none() {
            // A spare whose preparation a crash cut short: it never held an entry.
            return Ok(None);
        }
        return Err(LogError::corrupt(path, 0, reason));
    }
    let mut offsets = Vec::new();
    let mut runs = TermRuns::default();
    let scan = segment::scan(bytes, |record| {
        offsets.push(u32::try_from(record.offset).expect("segment length checked"));
        if record.index > compacted_index {
            runs.push(record.index, record.term);
        }
    });
    let torn_end = if scan.stop == Stop::Clean && scan.tail_zero {
        None
    } else {
        Some(segment::last_nonzero(bytes, scan.end).map_or(scan.end, |last| last + 1))
    };
    let damage = torn_end.and_then(|_| segment::damage_after(bytes, scan.end));
    drop(map);
    if let Some((after, what)) = damage {
        // Entries after the bad record may have been acknowledged: dropping them would lose
        // them silently, so the node refuses to start and the operator decides.
        return Err(LogError::corrupt(
            path,
            scan.end as u64,
            format!("damaged entry record: not a torn write ({what} at byte offset {after})"),
        ));
    }
    if let Some(torn_end) = torn_end {
        let reason = match scan.stop {
            Stop::Invalid { reason, .. } => reason,
            Stop::Clean => "non-zero bytes after an empty record header",
        };
        log::warn!(
            "{}: torn tail at byte offset {} ({reason}): dropping bytes {}..{} after entry {}",
            path.display(),
            scan.end,
            scan.end,
            torn_end,
            scan.last
                .map_or("none".to_string(), |index| index.to_string())
        );
        zero_range(&*file, scan.end, torn_end)
            .and_then(|()| file.sync())
            .map_err(|error| LogError::io("zeroing torn tail", path, error))?;
    }
    Ok(Some(RecoveredOpen {
        counter,
        name,
        file,
        capacity,
        first: scan.first.unwrap_or(LogIndex(0)),
        offsets,
        runs,
        end: scan.end,
    }))
}

/// The capacity of a new segment that must hold a record of `record_bytes`, in a log of
/// `segment_bytes` segments on a machine of `page_bytes` pages. The configured size is kept
/// whenever the record fits, whatever the page size (aarch64 kernels may use 64 KiB pages, and a
/// 4 KiB segment must stay 4 KiB there); only an oversized record's own segment is rounded up
/// to whole pages.
fn segment_capacity(segment_bytes: u64, record_bytes: usize, page_bytes: usize) -> usize {
    let segment_bytes =
        usize::try_from(segment_bytes).expect("SEGMENT_BYTES_MAX fits in a 32-bit usize");
    let needed = SEGMENT_HEADER_BYTES + record_bytes;
    if needed <= segment_bytes {
        return segment_bytes;
    }
    needed.next_multiple_of(page_bytes)
}

/// `offset` rounded down to a page boundary: released ranges end there, so the next one starts
/// where the last one stopped and no page is left behind in between.
fn page_floor(offset: usize) -> usize {
    offset - offset % mmap::page_bytes()
}

fn zero_range(file: &dyn DiskFile, start: usize, end: usize) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(end - start)];
    let mut offset = start;
    while offset < end {
        let chunk = zeros.len().min(end - offset);
        file.write_all_at(&zeros[..chunk], offset as u64)?;
        offset += chunk;
    }
    Ok(())
}

/// Takes the data directory's lock: an exclusive `flock` on `LOCK`, held by the returned file.
/// `flock` locks belong to the open file, so a second `SegmentLog` in the same process is
/// refused too. A child process shares the lock between its `fork` and its `exec` (our files
/// are close-on-exec), so an open racing a spawn in another thread may see it briefly held.
fn lock_dir(disk: &dyn Disk, dir: &Path) -> Result<Arc<dyn DiskFile>, LogError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = disk
        .open(&path, OpenMode::Create)
        .map_err(|error| LogError::io("opening lock file", &path, error))?;
    match file.try_lock() {
        Ok(true) => Ok(file),
        Ok(false) => Err(LogError::Locked { path }),
        Err(error) => Err(LogError::io("locking", &path, error)),
    }
}

fn remove_file(disk: &dyn Disk, path: &Path) -> Result<(), LogError> {
    disk.remove_file(path)
        .map_err(|error| LogError::io("removing segment", path, error))
}

fn sync_dir_file(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    disk.sync_dir(dir)
        .map_err(|error| LogError::io("syncing data directory", dir, error))
}

/// The hard state saved in the metadata files of the log directory `dir`, read without opening
/// the log (its segments may be damaged, and no lock is taken: the caller holds the node's).
/// `Ok(None)` when none was ever saved; an error when neither file holds a valid record.
pub fn read_hard_state(dir: &Path) -> Result<Option<HardState>, LogError> {
    read_hard_state_on(&crate::StdDisk, dir)
}

/// [`read_hard_state`] on `disk`.
pub fn read_hard_state_on(disk: &dyn Disk, dir: &Path) -> Result<Option<HardState>, LogError> {
    let files = [
        meta::read_metadata_file(disk, &dir.join(METADATA_FILE_NAMES[0]))?,
        meta::read_metadata_file(disk, &dir.join(METADATA_FILE_NAMES[1]))?,
    ];
    Ok(meta::choose_metadata(dir, files)?.map(|metadata| metadata.hard_state))
}

/// The name of the closed segment holding `first..=last`.
pub fn closed_name(first: LogIndex, last: LogIndex) -> String {
    format!("{:020}-{:020}", first.0, last.0)
}

fn parse_closed_name(name: &str) -> Option<(LogIndex, LogIndex)> {
    let (first, last) = name.split_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    if !first
        .bytes()
        .chain(last.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((LogIndex(first.parse().ok()?), LogIndex(last.parse().ok()?)))
}

fn parse_open_name(name: &str) -> Option<u64> {
    let counter = name.strip_prefix(OPEN_PREFIX)?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    counter.parse().ok()
}

#[cfg(test)]
mod tests;

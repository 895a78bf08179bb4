//! Checkpoints: when a database's WAL is copied into its main file, the copy itself (the
//! intent record, `wal_checkpoint`, the fdatasync and the new record), and the checkpointer
//! thread that can do the sync and record in the background.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use atoll_storage::{Disk, DiskFile};

use super::{Engine, Slot};
use crate::error::EngineError;
use crate::record::{self, Record};

impl Engine {
    /// The WAL size at which the next checkpoint starts: `checkpoint_frames` plus this
    /// checkpoint's jitter.
    pub(super) fn next_checkpoint_frames(&mut self) -> u32 {
        let jitter = self.config.checkpoint_jitter_frames;
        if jitter == 0 {
            return self.config.checkpoint_frames;
        }
        self.jitter_state = self.jitter_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let extra = (z % (u64::from(jitter) + 1)) as u32;
        self.config.checkpoint_frames.saturating_add(extra)
    }

    pub(super) fn should_checkpoint(&self, database: &str) -> bool {
        let db = &self.databases[database];
        match db.files.index_header() {
            Ok(Some(header)) => header.max_frame >= db.checkpoint_at_frames,
            _ => false,
        }
    }

    /// Checkpoints every database whose WAL holds frames (or all of them with `force`, which
    /// also advances the recorded index of databases without frames, so an idle database never
    /// holds back log compaction). Returns the minimum checkpoint index afterwards.
    pub fn checkpoint(&mut self, force: bool) -> Result<Option<u64>, EngineError> {
        if force {
            self.wait_checkpoints();
            self.checkpoint_some(true, self.applied_index)
        } else {
            self.checkpoint_some(false, 0)
        }
    }

    /// Checkpoints every database whose checkpoint index is below `index` (a snapshot's), however
    /// few frames its WAL holds, the way its WAL's own policy would (a PASSIVE copy; the sync
    /// and record in the background when the engine does that): the log behind a snapshot is
    /// compacted once every checkpoint passes it. Idle databases only have their index
    /// advanced. One whose sync is still running, or whose frames a reader holds, is left for
    /// a later call. Returns the minimum checkpoint index (of the records durable so far).
    pub fn checkpoint_behind(&mut self, index: u64) -> Result<Option<u64>, EngineError> {
        self.checkpoint_some(false, index)
    }

    /// [`Engine::checkpoint`] and [`Engine::checkpoint_behind`]: the databases with enough
    /// frames, those (open or closed) whose checkpoint index is below `behind`, all of them
    /// with `force`.
    fn checkpoint_some(&mut self, force: bool, behind: u64) -> Result<Option<u64>, EngineError> {
        let names: Vec<String> = self.databases.keys().cloned().collect();
        for name in names {
            let db = &self.databases[&name];
            let lagging = db.record.checkpoint_index < behind;
            let frames = db.files.index_header()?.map(|h| h.max_frame).unwrap_or(0);
            if force || lagging || frames >= self.config.checkpoint_frames {
                self.checkpoint_database(&name, force)?;
            }
        }
        // Closed databases are idle with an empty WAL: only their index moves.
        let lagging = self
            .closed
            .iter()
            .filter(|(_, closed)| closed.record.checkpoint_index < behind)
            .map(|(name, _)| name.clone());
        self.idle_found.extend(lagging);
        let idle = std::mem::take(&mut self.idle_found);
        match idle.as_slice() {
            [] => {}
            [name] if self.databases.contains_key(name) => {
                let db = self.databases.get_mut(name).expect("known database");
                let record = Record {
                    checkpoint_index: self.applied_index,
                    last_command_index: db.last_command_index,
                    ..db.record
                };
                db.record = durable(
                    &mut self.sync_failure,
                    name,
                    record::write(&*self.config.disk, &db.path, &record),
                )?;
            }
            _ => self.advance_idle(&idle)?,
        }
        Ok(self.min_checkpoint_index())
    }

    /// Checkpoints one database: records the intent, copies the WAL into the main file
    /// (`wal_checkpoint(PASSIVE)`, or `TRUNCATE` when forced), fsyncs it, then records the new
    /// checkpoint index. Returns whether it completed (readers or an open transaction can make
    /// it wait for a later try).
    pub(super) fn checkpoint_database(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<bool, EngineError> {
        if self.databases[name].sync_pending {
            if !force {
                return Ok(false);
            }
            self.wait_checkpoints();
        }
        let target = self.applied_index;
        let next_at = self.next_checkpoint_frames();
        let db = self.databases.get_mut(name).expect("known database");
        if matches!(db.slot, Slot::Transaction(_))
            || Arc::strong_count(&db.snapshot_token) > 1
            || db.recovering_until > target
        {
            return Ok(false);
        }
        let frames = db.files.index_header()?.map(|h| h.max_frame).unwrap_or(0);
        if frames == 0 && db.record.intent_index == 0 {
            // Nothing applied since its last checkpoint: it reflects `target` already. Its
            // index advances with the other idle ones, in one write (`checkpoint`).
            if db.record.checkpoint_index < target {
                self.idle_found.push(name.to_string());
            }
            return Ok(true);
        }
        let started = std::time::Instant::now();
        if db.record.intent_index < target {
            let intent = Record {
                intent_index: target,
                ..db.record
            };
            db.record = durable(
                &mut self.sync_failure,
                name,
                record::write(&*self.config.disk, &db.path, &intent),
            )?;
        }
        // PASSIVE copies the frames no reader needs; once all are copied, the next apply starts
        // the WAL over in place (bounded by the policy; rewriting cached file pages is cheaper
        // than growing the file again). A forced checkpoint (the host's, when idle or before
        // compaction) truncates the WAL and gives the space back.
        let sql = if force {
            "PRAGMA wal_checkpoint(TRUNCATE)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        let started_copy = std::time::Instant::now();
        // A database recovered from a checkpoint cut short opened without its schema.
        db.control.configure()?;
        let (busy, log, copied): (i64, i64, i64) = db
            .control
            .connection()
            .query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(disk_full_as_io)?;
        if busy != 0 || (!force && log != copied) {
            log::debug!("checkpoint of {name:?} is busy; retrying later");
            let step = (self.config.checkpoint_frames / 4).max(1);
            db.checkpoint_at_frames = frames.saturating_add(step);
            return Ok(false);
        }
        db.checkpoint_at_frames = next_at;
        let record = Record {
            checkpoint_index: target,
            last_command_index: db.last_command_index,
            intent_index: 0,
            ..db.record
        };
        if let (false, Some(checkpointer)) = (force, &self.checkpointer) {
            let job = SyncJob {
                database: name.to_string(),
                disk: Arc::clone(&self.config.disk),
                main: db.files.main_file_clone()?,
                path: db.path.clone(),
                record,
            };
            let jobs = checkpointer.jobs.as_ref().expect("running");
            if jobs.send(job).is_ok() {
                db.sync_pending = true;
                log::debug!(
                    "checkpoint of {name:?} at index {target}: intent {:?}, copy {:?}; \
                     sync and record in the background",
                    started_copy - started,
                    started_copy.elapsed()
                );
                return Ok(true);
            }
            // The thread is gone (it only stops with the engine): sync here.
        }
        let started_sync = std::time::Instant::now();
        let failure = &mut self.sync_failure;
        durable(failure, name, db.files.sync_main())?;
        let synced = std::time::Instant::now();
        db.record = durable(
            failure,
            name,
            record::write(&*self.config.disk, &db.path, &record),
        )?;
        log::debug!(
            "checkpointed {name:?} at index {target}: intent {:?}, copy {:?}, sync {:?}, \
             record {:?}",
            started_copy - started,
            started_sync - started_copy,
            synced - started_sync,
            synced.elapsed()
        );
        Ok(true)
    }

    /// Takes the checkpointer thread's answers (with `checkpoint_sync_in_background`): each
    /// makes a database's new checkpoint index current. Never blocks; the host calls it every
    /// turn of its loop.
    pub fn poll_checkpoints(&mut self) {
        while let Some(done) = self
            .checkpointer
            .as_ref()
            .and_then(|c| c.done.try_recv().ok())
        {
            self.checkpoint_done(done);
        }
    }

    /// Waits for every checkpoint sync in the background to finish.
    pub(crate) fn wait_checkpoints(&mut self) {
        while self.databases.values().any(|db| db.sync_pending) {
            let Some(done) = self.checkpointer.as_ref().and_then(|c| c.done.recv().ok()) else {
                break;
            };
            self.checkpoint_done(done);
        }
    }

    fn checkpoint_done(&mut self, done: SyncDone) {
        let Some(db) = self.databases.get_mut(&done.database) else {
            return;
        };
        db.sync_pending = false;
        match done.result {
            Ok(record) => {
                log::debug!(
                    "checkpointed {:?} at index {} (synced in the background)",
                    done.database,
                    record.checkpoint_index
                );
                db.record = record;
            }
            // The record keeps its intent; never synced again: the host stops (see
            // `sync_failure`), and recovery replays the log from the durable record.
            Err(error) => {
                let _ = durable::<()>(&mut self.sync_failure, &done.database, Err(error));
            }
        }
    }

    /// Why a checkpoint's fdatasync failed, if one did: the host must stop (and restart, which
    /// replays the log from the last durable record). An fsync is never retried after it
    /// failed (PostgreSQL's lesson: the kernel may have dropped the pages it could not write).
    pub fn sync_failure(&self) -> Option<&str> {
        self.sync_failure.as_deref()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.wait_checkpoints();
        if let Some(mut checkpointer) = self.checkpointer.take() {
            checkpointer.jobs = None;
            if let Some(thread) = checkpointer.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The durable half of one checkpoint, for the checkpointer thread.
struct SyncJob {
    database: String,
    disk: Arc<dyn Disk>,
    main: Arc<dyn DiskFile>,
    path: PathBuf,
    record: Record,
}

/// The checkpointer thread's answer: the record now durable, or why not.
struct SyncDone {
    database: String,
    result: std::io::Result<Record>,
}

/// The checkpointer thread: fdatasyncs a main file, then writes its record, in order.
pub(super) struct Checkpointer {
    jobs: Option<mpsc::Sender<SyncJob>>,
    done: mpsc::Receiver<SyncDone>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start() -> Result<Checkpointer, EngineError> {
        let (jobs, job_rx) = mpsc::channel::<SyncJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("atoll-checkpoint".into())
            .spawn(move || {
                for job in job_rx {
                    // The record may name the new index only once the pages it covers are
                    // durable in the main file.
                    let result = job
                        .main
                        .sync()
                        .and_then(|()| record::write(&*job.disk, &job.path, &job.record));
                    let answer = SyncDone {
                        database: job.database,
                        result,
                    };
                    if done_tx.send(answer).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

/// SQLite's "database or disk is full" (our VFS answers SQLITE_FULL to an ENOSPC) as the
/// `io::Error` it was, so that the host treats a checkpoint cut short by a full disk as it
/// treats any full disk: retried once space is back, never fatal. The WAL keeps every frame
/// and SQLite copies them again on the next try; the record keeps its intent meanwhile.
pub(super) fn disk_full_as_io(error: rusqlite::Error) -> EngineError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => EngineError::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            error.to_string(),
        )),
        _ => EngineError::Sqlite(error),
    }
}

/// Passes `result` on, recording the first failure of a checkpoint's sync in `failure`.
pub(super) fn durable<T>(
    failure: &mut Option<String>,
    database: &str,
    result: std::io::Result<T>,
) -> Result<T, EngineError> {
    result.map_err(|error| {
        log::error!("checkpoint of {database:?}: sync failed: {error}");
        failure.get_or_insert_with(|| format!("syncing {database:?} in a checkpoint: {error}"));
        EngineError::Io(error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn test_sqlite_full_is_a_full_disk() {
        // Seed 1286: SQLITE_FULL from a checkpoint's copy stopped the node as a fatal error.
        match disk_full_as_io(sqlite_error(rusqlite::ffi::SQLITE_FULL)) {
            EngineError::Io(error) => assert_eq!(error.kind(), std::io::ErrorKind::StorageFull),
            other => panic!("not a full disk: {other}"),
        }
        assert!(matches!(
            disk_full_as_io(sqlite_error(rusqlite::ffi::SQLITE_IOERR)),
            EngineError::Sqlite(_)
        ));
    }
}

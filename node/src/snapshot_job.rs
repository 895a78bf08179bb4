//! A snapshot of the databases on its way into the snapshot store. The loop copies it a
//! bounded piece per turn (the engine's reader holds read transactions, which only the loop's
//! thread may use); then a helper thread makes the file durable (its fsync, the rename into
//! place, the directory's fsync), so that the loop never waits for the disk to take a file as
//! large as the databases. A simulation finishes it on the loop, so that a seed replays alike.

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

use atoll_raft::LogIndex;
use atoll_storage::{SnapshotMeta, SnapshotWriter};

/// Bytes copied per loop turn (a millisecond or so of work): a snapshot of a large database
/// spreads over many turns, so clients keep being served while it is written.
const BYTES_PER_TURN: usize = 1 << 20;

/// One snapshot being written.
pub(crate) struct SnapshotJob {
    index: LogIndex,
    stage: Stage,
}

enum Stage {
    /// The loop copies the stream into the file.
    Copying {
        reader: Box<atoll_core::SnapshotReader>,
        writer: Box<SnapshotWriter>,
        buffer: Vec<u8>,
        /// Bytes written so far.
        written: u64,
        /// Bytes the whole stream has.
        total: u64,
    },
    /// Every byte is written; a helper thread syncs the file and renames it into place.
    Finishing {
        done: mpsc::Receiver<io::Result<SnapshotMeta>>,
        thread: Option<JoinHandle<()>>,
    },
}

/// What a turn of work left.
pub(crate) enum Progress {
    /// More turns are needed.
    Working,
    /// The snapshot is durable and listed in the store.
    Written(SnapshotMeta),
    /// Writing it failed (`why`): its unfinished file is gone.
    WriteFailed(String, io::Error),
    /// Reading the databases failed.
    ReadFailed(io::Error),
}

impl SnapshotJob {
    pub(crate) fn new(
        index: LogIndex,
        reader: atoll_core::SnapshotReader,
        writer: SnapshotWriter,
    ) -> SnapshotJob {
        SnapshotJob {
            index,
            stage: Stage::Copying {
                total: reader.len_bytes(),
                reader: Box::new(reader),
                writer: Box::new(writer),
                buffer: vec![0; 64 * 1024],
                written: 0,
            },
        }
    }

    /// The snapshot's index.
    pub(crate) fn index(&self) -> LogIndex {
        self.index
    }

    /// Whether the loop still has copying to do (its next turn must not wait for input).
    pub(crate) fn copying(&self) -> bool {
        matches!(self.stage, Stage::Copying { .. })
    }

    /// One turn's work: copies up to [`BYTES_PER_TURN`]; once the stream is written, ends the
    /// databases' read transactions (their checkpoints may go on) and finishes the file, on a
    /// helper thread with `background`, here otherwise. While a helper finishes, checks
    /// whether it is done, without waiting.
    pub(crate) fn turn(&mut self, background: bool) -> Progress {
        match &mut self.stage {
            Stage::Copying {
                reader,
                writer,
                buffer,
                written,
                total,
            } => {
                let mut copied = 0;
                loop {
                    if copied >= BYTES_PER_TURN {
                        return Progress::Working;
                    }
                    let read = match reader.read(buffer) {
                        Ok(0) => break, // The end of the stream.
                        Ok(read) => read,
                        Err(e) => return Progress::ReadFailed(e),
                    };
                    if let Err(e) = writer.write_all(&buffer[..read]) {
                        let why =
                            format!("writing snapshot {} ({written} bytes written)", self.index);
                        return Progress::WriteFailed(why, e);
                    }
                    *written += read as u64;
                    copied += read;
                }
                if written != total {
                    // Never a snapshot that is not whole: its install would fail on every
                    // follower sent it.
                    let why = format!(
                        "snapshot {}: the stream ended after {written} of {total} bytes",
                        self.index
                    );
                    return Progress::ReadFailed(io::Error::new(io::ErrorKind::InvalidData, why));
                }
                self.finish(background)
            }
            Stage::Finishing { done, thread } => match done.try_recv() {
                Err(mpsc::TryRecvError::Empty) => Progress::Working,
                Ok(result) => {
                    if let Some(thread) = thread.take() {
                        let _ = thread.join();
                    }
                    self.finished(result)
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    let why = format!("finishing snapshot {}", self.index);
                    Progress::WriteFailed(why, io::Error::other("the helper thread died"))
                }
            },
        }
    }

    /// For a stop: a snapshot whose file a helper is finishing is waited for, and its outcome
    /// returned; one still being copied is dropped (its unfinished file removed): `None`.
    pub(crate) fn wait_finished(mut self) -> Option<io::Result<SnapshotMeta>> {
        let Stage::Finishing { done, thread } = &mut self.stage else {
            return None;
        };
        let result = done
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the helper thread died")));
        if let Some(thread) = thread.take() {
            let _ = thread.join();
        }
        Some(result)
    }

    /// The stream is all written: the file is finished.
    fn finish(&mut self, background: bool) -> Progress {
        let (done_tx, done) = mpsc::channel();
        let Stage::Copying { writer, .. } =
            std::mem::replace(&mut self.stage, Stage::Finishing { done, thread: None })
        else {
            unreachable!("finish is called while copying");
        };
        // The reader went with the stage: its read transactions are over.
        if !background {
            return self.finished(writer.finish());
        }
        let spawned = std::thread::Builder::new()
            .name("atoll-snapshot".into())
            .spawn(move || {
                let _ = done_tx.send(writer.finish());
            });
        match spawned {
            Ok(handle) => {
                if let Stage::Finishing { thread, .. } = &mut self.stage {
                    *thread = Some(handle);
                }
                Progress::Working
            }
            Err(e) => {
                let why = format!("starting a thread to finish snapshot {}", self.index);
                Progress::WriteFailed(why, e)
            }
        }
    }

    fn finished(&self, result: io::Result<SnapshotMeta>) -> Progress {
        match result {
            Ok(meta) => Progress::Written(meta),
            Err(e) => Progress::WriteFailed(format!("finishing snapshot {}", self.index), e),
        }
    }
}

impl Drop for SnapshotJob {
    /// A snapshot dropped while its file is being finished waits for that: the store's
    /// directory must not change under whatever opens it next.
    fn drop(&mut self) {
        if let Stage::Finishing { thread, .. } = &mut self.stage {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

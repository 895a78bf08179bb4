//! The janitor: file work the loop must not wait for, on a helper thread. It deletes files the
//! node no longer needs (log segments behind a durable compaction point, old snapshots: a
//! large file's unlink and a directory's fsync, measured at 5 to 50 ms each on a shared disk),
//! and prepares the log's next segment (create, preallocate, rename: up to 36 ms measured).
//! Only space and a spare wait for it: nothing reads the deleted files any more, recovery
//! deletes whatever a crash leaves, and an append that finds no spare makes one itself. A
//! simulation does it all on the loop, so that a seed replays alike.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use atoll_storage::{Removal, SpareRequest};
use log::warn;

enum Job {
    Remove(Removal),
    Spare(SpareRequest),
}

/// A prepared (or failed) next segment, for `SegmentLog::spare_ready`.
pub(crate) type SpareDone = (SpareRequest, io::Result<()>);

pub(crate) struct Janitor {
    /// `None` without a helper thread: the work runs on the caller's.
    jobs: Option<mpsc::Sender<Job>>,
    done: Option<mpsc::Receiver<SpareDone>>,
    /// Without a helper thread: the spare prepared on the caller's.
    done_here: Option<SpareDone>,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    /// A janitor with its helper thread (`background`), or one that works on the caller's.
    pub(crate) fn start(background: bool) -> io::Result<Janitor> {
        if !background {
            return Ok(Janitor {
                jobs: None,
                done: None,
                done_here: None,
                thread: None,
            });
        }
        let (jobs, received) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("atoll-janitor".into())
            .spawn(move || {
                for job in received {
                    match job {
                        Job::Remove(removal) => remove(&removal),
                        Job::Spare(mut request) => {
                            let result = request.run();
                            if done_tx.send((request, result)).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Janitor {
            jobs: Some(jobs),
            done: Some(done),
            done_here: None,
            thread: Some(thread),
        })
    }

    /// Deletes the files of `removal`, on the helper thread if there is one.
    pub(crate) fn remove(&mut self, removal: Removal) {
        if let Err(Job::Remove(removal)) = self.send(Job::Remove(removal)) {
            remove(&removal);
        }
    }

    /// Prepares the log's next segment; [`Janitor::spare_done`] hands it back.
    pub(crate) fn prepare(&mut self, request: SpareRequest) {
        if let Err(Job::Spare(mut request)) = self.send(Job::Spare(request)) {
            let result = request.run();
            self.done_here = Some((request, result));
        }
    }

    /// The next segment prepared since the last call, if any. Never waits.
    pub(crate) fn spare_done(&mut self) -> Option<SpareDone> {
        self.done_here
            .take()
            .or_else(|| self.done.as_ref()?.try_recv().ok())
    }

    /// Hands `job` to the helper thread; gives it back when there is none (any more).
    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        }
    }
}

impl Drop for Janitor {
    /// Waits for the work handed over: whatever opens the data directory next (a restart in
    /// place) must not see files change under it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn remove(removal: &Removal) {
    if let Err(e) = removal.run() {
        // Space only: the next start deletes what is left.
        warn!(
            "removing {} file(s) no longer needed: {e}",
            removal.paths().len()
        );
    }
}

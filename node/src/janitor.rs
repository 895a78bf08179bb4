//! The janitor: deletes files the node no longer needs (log segments behind a durable
//! compaction point, old snapshots) on a helper thread, so that the loop never waits for a
//! large file's unlink or a directory's fsync (measured at 5 to 50 ms each on a shared disk).
//! Only space waits for it: nothing reads those files any more, and recovery deletes whatever
//! a crash leaves. A simulation removes them on the loop, so that a seed replays alike.

use std::sync::mpsc;
use std::thread::JoinHandle;

use atoll_storage::Removal;
use log::warn;

pub(crate) struct Janitor {
    /// `None` without a helper thread: removals run on the caller's.
    jobs: Option<mpsc::Sender<Removal>>,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    /// A janitor with its helper thread (`background`), or one that removes on the caller.
    pub(crate) fn start(background: bool) -> std::io::Result<Janitor> {
        if !background {
            return Ok(Janitor {
                jobs: None,
                thread: None,
            });
        }
        let (jobs, received) = mpsc::channel::<Removal>();
        let thread = std::thread::Builder::new()
            .name("atoll-janitor".into())
            .spawn(move || {
                for removal in received {
                    remove(&removal);
                }
            })?;
        Ok(Janitor {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Deletes the files of `removal`, on the helper thread if there is one.
    pub(crate) fn remove(&self, removal: Removal) {
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::SendError(removal)) = jobs.send(removal) {
                    remove(&removal); // The thread is gone: here, then.
                }
            }
            None => remove(&removal),
        }
    }
}

impl Drop for Janitor {
    /// Waits for every removal handed over: whatever opens the data directory next (a restart
    /// in place) must not see files vanish under it.
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

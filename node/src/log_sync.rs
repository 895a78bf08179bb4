//! Log syncs off the loop thread. The loop appends a ready's entries and sends its appends at
//! once, then hands the log's sync to a [`LogSync`] and keeps turning (receiving, executing,
//! appending more, sending) while the disk works. When the sync is done the loop tells raft
//! what is durable (`on_persisted`) and sends the acknowledgements that waited for it.
//!
//! ```text
//!  loop thread                                  LogSync (a thread; or the simulated disk)
//!  ready 1: append 1..=5, send appends
//!           sync_begin -> request(..=5) ------> msync(the open segment's unsynced range)
//!  ready 2: append 6..=7, acks wait (pending)    |
//!  ready 3: append 8, acks wait (pending)        |
//!  <------------------------------------------- done (waker)
//!  sync_end -> durable 5: on_persisted, send ready 1's acks
//!  sync_begin -> request(..=8) ---------------> msync ...  (ready 2 and 3 coalesced)
//! ```
//!
//! Rules: at most one sync in flight and one pending (coalesced: it covers everything appended
//! when it starts); an acknowledgement leaves only once everything appended before it was
//! queued is durable; raft learns the durable index from the log itself (`sync_end`), which
//! never counts a request begun before a truncation, so raft never believes a truncated entry
//! durable, even one appended again under the same index and term; acknowledgements queued
//! before a truncation are dropped (they may acknowledge cut entries; raft resends); a failed
//! sync stops the node, as before. The term and vote are still saved synchronously before any
//! message leaves.
//!
//! A full log segment is closed the same way (`SegmentLog::set_background_close`): the append
//! that does not fit is refused, its entries go back to raft (and the acknowledgements of that
//! ready are held, `Node::held_acks`), and the next sync request flushes, renames and syncs
//! the directory off the loop; once it ends the entries are appended to the next segment and
//! the held acknowledgements leave with that append's sync. The loop waits for such a request
//! only before installing a snapshot and at stop, which must not change the log's files under
//! it.
//!
//! Production runs [`SyncThread`]; the simulator runs [`SimulatedSync`], which completes a
//! request after a delay drawn from the seed, on the simulator's one thread, so that a seed
//! replays identically. Both sit behind [`LogSync`]: "sync the log up to X, tell me when done",
//! whatever disk lies under the log.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atoll_net::reactor::Waker;
use atoll_raft::{LogIndex, Message};
use atoll_storage::{LogRead, SyncRequest};
use log::error;

use crate::inputs::{Random, SeededRandom};
use crate::{fatal, Node, NodeError};

/// Runs the log's syncs for the loop. The node starts at most one request at a time and
/// collects it with [`LogSync::finished`] before starting another.
pub trait LogSync: Send {
    /// Starts running `request` (the loop's clock reads `now`).
    fn start(&mut self, request: SyncRequest, now: Instant);

    /// The started request with the outcome of its run, once it is done (`now`: the loop's
    /// clock); `None` while it runs or when none was started.
    fn finished(&mut self, now: Instant) -> Option<(SyncRequest, io::Result<()>)>;

    /// Waits for the started request to be done and returns it, as `finished` would (a
    /// simulated disk completes it at once). `None` when none was started. For the rare waits
    /// that must not overlap a segment's close (a snapshot install, the stop).
    fn wait(&mut self, now: Instant) -> Option<(SyncRequest, io::Result<()>)>;

    /// When the started request will be done, for implementations that know (a simulated
    /// disk): the loop waits no longer than that. `None` for a thread, which wakes the loop.
    fn due(&self) -> Option<Instant>;

    /// Forgets the started request unrun (the node reopens in place: its log is closed).
    fn reset(&mut self);
}

/// Production: one thread that runs the requests, and wakes the loop when one is done.
pub struct SyncThread {
    requests: Option<mpsc::Sender<SyncRequest>>,
    done: mpsc::Receiver<(SyncRequest, io::Result<()>)>,
    thread: Option<JoinHandle<()>>,
}

impl SyncThread {
    /// Starts the thread (`atoll-log-sync`); `waker` makes the loop's poll return.
    pub fn start(waker: Waker) -> io::Result<SyncThread> {
        let (requests, request_rx) = mpsc::channel::<SyncRequest>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("atoll-log-sync".into())
            .spawn(move || {
                for request in request_rx {
                    let result = request.run();
                    if done_tx.send((request, result)).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        error!("log sync: cannot wake the loop: {e}");
                    }
                }
            })?;
        Ok(SyncThread {
            requests: Some(requests),
            done,
            thread: Some(thread),
        })
    }
}

impl LogSync for SyncThread {
    fn start(&mut self, request: SyncRequest, _now: Instant) {
        let requests = self.requests.as_ref().expect("open until dropped");
        requests
            .send(request)
            .expect("the log sync thread runs until the node drops it");
    }

    fn finished(&mut self, _now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        match self.done.try_recv() {
            Ok(done) => Some(done),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                panic!("the log sync thread ended while the node runs")
            }
        }
    }

    fn wait(&mut self, _now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        self.done.recv().ok()
    }

    fn due(&self) -> Option<Instant> {
        None
    }

    fn reset(&mut self) {
        // Not used: a reopen starts a new thread. A request still running finishes unseen.
        while self.done.try_recv().is_ok() {}
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        // The thread ends after the request it is running, if any.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A simulated disk's sync latency: most syncs take 50 µs to 1 ms, one in 16 up to 8 ms, one
/// in 256 up to 40 ms (a slow disk), drawn from a seed.
fn simulated_delay(random: &mut dyn Random) -> Duration {
    let draw = random.next_u64();
    let max_us = match draw % 256 {
        0 => 40_000,
        1..=16 => 8_000,
        _ => 1_000,
    };
    Duration::from_micros(50 + (draw >> 8) % max_us)
}

/// The simulator's: a request completes (runs, on the caller's thread) once the loop's clock
/// reaches a due time drawn from the seed. Nothing runs before: a crash before the due time
/// loses the request's bytes, as a power cut during a real sync may.
pub struct SimulatedSync {
    random: SeededRandom,
    started: Option<(SyncRequest, Instant)>,
}

impl SimulatedSync {
    /// Delays drawn from `seed`.
    pub fn new(seed: u64) -> SimulatedSync {
        SimulatedSync {
            random: SeededRandom::new(seed),
            started: None,
        }
    }
}

impl LogSync for SimulatedSync {
    fn start(&mut self, request: SyncRequest, now: Instant) {
        assert!(self.started.is_none(), "one sync at a time");
        let due = now + simulated_delay(&mut self.random);
        self.started = Some((request, due));
    }

    fn finished(&mut self, now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        if self.started.as_ref().is_none_or(|(_, due)| now < *due) {
            return None;
        }
        let (request, _) = self.started.take().expect("checked above");
        let result = request.run();
        Some((request, result))
    }

    fn wait(&mut self, _now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        let (request, _) = self.started.take()?;
        let result = request.run();
        Some((request, result))
    }

    fn due(&self) -> Option<Instant> {
        self.started.as_ref().map(|(_, due)| *due)
    }

    fn reset(&mut self) {
        self.started = None;
    }
}

/// The sync in flight: when it started, and the acknowledgements waiting for it.
pub(crate) struct SyncInFlight {
    started: Instant,
    messages: Vec<Message>,
}

/// The loop's side: the sync in flight, and what waits for the next one.
#[derive(Default)]
pub(crate) struct Durability {
    in_flight: Option<SyncInFlight>,
    /// Entries were appended since the sync in flight began (`Some`, with the acknowledgements
    /// of those readies): one more sync starts when it ends, covering all of them.
    pending: Option<Vec<Message>>,
    /// The log's truncation count when acknowledgements were last queued.
    truncations: u64,
}

impl Node {
    /// When the sync in flight finishes, if the `LogSync` knows (a simulated disk): a host
    /// driving turns on simulated time turns the node then.
    #[cfg(feature = "sim")]
    pub(crate) fn sync_due(&self) -> Option<Instant> {
        self.log_sync.due()
    }

    /// A ready was persisted (appended, truncated, installed): its acknowledgements wait for
    /// everything appended so far to be durable. `must_sync`: it appended or installed
    /// something, so a sync is needed; otherwise its messages go now if nothing waits.
    pub(crate) fn durability_after_ready(
        &mut self,
        must_sync: bool,
        messages: Vec<Message>,
    ) -> Result<(), NodeError> {
        self.durability_note_truncations();
        if must_sync && self.durability.in_flight.is_some() {
            self.durability
                .pending
                .get_or_insert_with(Vec::new)
                .extend(messages);
        } else if must_sync {
            self.sync_start(messages)?;
        } else if let Some(pending) = self.durability.pending.as_mut() {
            pending.extend(messages);
        } else if let Some(in_flight) = self.durability.in_flight.as_mut() {
            in_flight.messages.extend(messages);
        } else {
            self.send_messages(messages);
        }
        Ok(())
    }

    /// Drops the acknowledgements queued before a truncation of the log: they may promise
    /// entries it cut (raft resends what the leader still needs).
    fn durability_note_truncations(&mut self) {
        let truncations = self.raft.log().truncations();
        if truncations == self.durability.truncations {
            return;
        }
        self.durability.truncations = truncations;
        if let Some(in_flight) = self.durability.in_flight.as_mut() {
            in_flight.messages.clear();
        }
        if let Some(pending) = self.durability.pending.as_mut() {
            pending.clear();
        }
    }

    /// Begins a sync of everything appended so far and hands it to the `LogSync`.
    fn sync_start(&mut self, messages: Vec<Message>) -> Result<(), NodeError> {
        assert!(self.durability.in_flight.is_none(), "one sync in flight");
        let started = self.clock.now();
        let request = self
            .raft
            .log_mut()
            .sync_begin()
            .map_err(|e| fatal("syncing the log", e))?;
        self.log_sync.start(request, started);
        self.durability.in_flight = Some(SyncInFlight { started, messages });
        self.turn_sync += self.clock.now().saturating_duration_since(started);
        Ok(())
    }

    /// Takes a finished sync, if any: raft learns what is durable, the acknowledgements that
    /// waited for it leave, and the pending sync starts. True if one finished.
    pub(crate) fn sync_poll(&mut self) -> Result<bool, NodeError> {
        if self.durability.in_flight.is_none() {
            return Ok(false);
        }
        let now = self.clock.now();
        let Some((request, result)) = self.log_sync.finished(now) else {
            return Ok(false);
        };
        self.sync_finished(request, result, now)?;
        Ok(true)
    }

    /// Waits for a sync request that closes a full segment, if one is out (a snapshot install
    /// and the stop must not change the log's files under it).
    pub(crate) fn log_close_wait(&mut self) -> Result<(), NodeError> {
        while self.raft.log().closing() && self.durability.in_flight.is_some() {
            let now = self.clock.now();
            let Some((request, result)) = self.log_sync.wait(now) else {
                break;
            };
            self.sync_finished(request, result, now)?;
        }
        Ok(())
    }

    /// A sync request ended: raft learns what is durable, the acknowledgements that waited
    /// leave, and the pending sync starts.
    fn sync_finished(
        &mut self,
        request: SyncRequest,
        result: io::Result<()>,
        now: Instant,
    ) -> Result<(), NodeError> {
        self.durability_note_truncations();
        let in_flight = self.durability.in_flight.take().expect("checked above");
        let durable = self
            .raft
            .log_mut()
            .sync_end(request, result)
            .map_err(|e| fatal("syncing the log", e))?;
        self.turn_sync += self.clock.now().saturating_duration_since(now);
        self.sync_done(in_flight, durable, now)?;
        if let Some(messages) = self.durability.pending.take() {
            self.sync_start(messages)?;
        }
        Ok(())
    }

    fn sync_done(
        &mut self,
        in_flight: SyncInFlight,
        durable: LogIndex,
        now: Instant,
    ) -> Result<(), NodeError> {
        self.stats.syncs += 1;
        let took = now.saturating_duration_since(in_flight.started);
        self.metrics.log_sync.observe(took.as_secs_f64());
        self.timings.synced(took, Some(durable.0), now);
        // The log says what is durable; its term pins the entry for raft (a stale report is
        // ignored there).
        let term = self
            .raft
            .log()
            .term(durable)
            .map_err(|e| fatal("reading the log", e))?;
        if let Some(term) = term {
            self.raft.on_persisted(durable, term);
        }
        if self.hard_state_unsaved || self.install_pending.is_some() {
            // Nothing leaves the node meanwhile (see `handle_ready`).
            return Ok(());
        }
        self.send_messages(in_flight.messages);
        Ok(())
    }
}

//! Repair from peers: a node whose Raft log, snapshot or database is damaged moves its data
//! aside and is rebuilt from the leader instead of refusing to start forever.
//!
//! Entry point: [`Damage`], whatever found it: at start `SegmentLog::open` (a corrupt or
//! missing part of the log), an unreadable snapshot, a database SQLite cannot open or whose
//! `quick_check` fails (`Engine::open`); while running a statement answered SQLITE_CORRUPT or
//! SQLITE_NOTADB (`Engine::take_corrupt_found`, checked every turn) or a REPAIR request from
//! `atoll verify --repair`. Found while running, the node stops its loop as on SIGTERM (a
//! leader hands leadership to another voter first; the engine already refuses writes to the
//! damaged database, so nothing built on it is replicated meanwhile) and the host restarts it
//! in place ([`Node::reopen_repaired`]: same process, same port). [`quarantine`] moves
//! `DIR/raft` (segments, metadata, snapshots) and `DIR/db` into `DIR/quarantine/<unix
//! seconds>/` (the wall time of the node's clock input; never deleted), creates an empty log
//! that keeps the saved term and vote, and leaves the marker `DIR/repairing`. It refuses when
//! the node has no other voter to be rebuilt from (`DIR/members`, the last configuration this
//! node saw, written at every change) or when the term and vote cannot be read: those cases
//! keep refusing to start, naming the damage.
//!
//! A closed database an apply cannot open again (its header page damaged) holds every apply
//! back, none past it, until the repair (retried each second meanwhile); a node that knows a
//! database damaged sends no snapshot chunk, so that the damage does not spread.
//!
//! Safety: the lost log may have held entries this node acknowledged, counted in a commit.
//! With an empty log it would look up to date to any candidate, so while `DIR/repairing` exists
//! raft withholds its vote (no vote granted, no campaign). A helper thread asks the leader to
//! REMOVE this node and ADD it back (as a spare, as `atoll join` does): the removal is the
//! point after which its vote no longer counts for anybody who holds the committed removal, and
//! the fresh membership gives the leader new progress for it (match 0: it is sent a snapshot or
//! the whole log). Automatic roles then promote it as any joining node, after catching up; with
//! manual roles the operator assigns it. Once both answers came back the marker is removed and
//! the vote given back.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError};
use atoll_raft::{Configuration, MemberRole, StateRole};
use atoll_storage::{LogStore, Options, SegmentLog};
use log::{debug, error, info, warn};

use super::config;
use super::inputs::Clock;
use super::{Node, NodeError};

/// The last configuration this node saw: one `id address role` line per member.
const MEMBERS_FILE: &str = "members";
/// Present while a repair is under way.
const REPAIRING_FILE: &str = "repairing";
/// Where damaged files go.
const QUARANTINE_DIR: &str = "quarantine";
/// Longest pause between two attempts to be re-added.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);
/// Largest members file read (256 members of short lines fit many times over).
const MEMBERS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Default of `StartOptions::repair_again_after`: a database found corrupt again within this
/// time of a repair in this process is not
/// repaired again by itself: the damage then likely came with the leader's copy, and each
/// repair keeps another quarantine copy on disk.
const REPAIR_AGAIN_AFTER: Duration = Duration::from_secs(600);

/// How long applies wait after one found a closed database damaged, before trying again.
const DAMAGED_APPLY_RETRY: Duration = Duration::from_secs(1);

/// What was found damaged, by whom.
#[derive(Debug)]
pub struct Damage {
    /// What and where, for the log and the marker.
    pub what: String,
}

fn role_word(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Standby => "standby",
        MemberRole::Spare => "spare",
    }
}

/// Writes `data` to `DIR/name` atomically (temporary file, fsync, rename, directory fsync).
fn write_atomically(data_dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let temporary = data_dir.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&temporary)?;
    io::Write::write_all(&mut file, data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, data_dir.join(name))?;
    fs::File::open(data_dir)?.sync_all()
}

/// Records `configuration` as the last one this node saw (not rewritten when unchanged: a
/// restart costs no sync).
pub fn write_members(data_dir: &Path, configuration: &Configuration) -> io::Result<()> {
    let mut text = String::new();
    for (id, member) in configuration.members() {
        text.push_str(&format!(
            "{} {} {}\n",
            id.0,
            member.address,
            role_word(member.role)
        ));
    }
    if fs::read(data_dir.join(MEMBERS_FILE)).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    write_atomically(data_dir, MEMBERS_FILE, text.as_bytes())
}

/// The members recorded by [`write_members`]: (id, address, is voter). Lines that do not parse
/// are skipped (the file is only a hint of where the cluster is).
fn read_members(data_dir: &Path) -> Vec<(u64, String, bool)> {
    let path = data_dir.join(MEMBERS_FILE);
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    let mut text = String::new();
    if io::Read::read_to_string(&mut io::Read::take(file, MEMBERS_FILE_BYTES_MAX), &mut text)
        .is_err()
    {
        return Vec::new();
    }
    text.lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let id = words.next()?.parse().ok()?;
            let address = words.next()?.to_owned();
            let voter = words.next()? == "voter";
            Some((id, address, voter))
        })
        .collect()
}

/// Whether a repair is under way (the marker exists).
pub fn is_repairing(data_dir: &Path) -> bool {
    data_dir.join(REPAIRING_FILE).exists()
}

/// Moves the damaged log and the databases aside and leaves an empty log with the saved term
/// and vote, and the marker. Returns the quarantine directory. Refuses (changing nothing) when
/// there is no other voter to repair from or the term and vote are unreadable.
/// The directory is named after `clock`'s wall-clock seconds (the node's time input).
pub fn quarantine(
    disk: &Arc<dyn atoll_storage::Disk>,
    data_dir: &Path,
    my_id: u64,
    damage: &Damage,
    clock: &dyn Clock,
) -> Result<PathBuf, String> {
    let others: Vec<String> = read_members(data_dir)
        .into_iter()
        .filter(|(id, _, voter)| *id != my_id && *voter)
        .map(|(_, address, _)| address)
        .collect();
    if others.is_empty() {
        return Err("no other voter is known to repair from".into());
    }
    let raft_dir = config::raft_dir(data_dir);
    let hard_state = atoll_storage::read_hard_state_on(&**disk, &raft_dir)
        .map_err(|e| format!("the term and vote cannot be read ({e})"))?
        .unwrap_or_default();
    let seconds = clock.unix_time().as_secs();
    let mut target = data_dir.join(QUARANTINE_DIR).join(seconds.to_string());
    let mut suffix = 1;
    while target.exists() || disk.exists(&target) {
        target = data_dir
            .join(QUARANTINE_DIR)
            .join(format!("{seconds}-{suffix}"));
        suffix += 1;
    }
    let failed = |what: &str, e: io::Error| format!("{what}: {e}");
    fs::create_dir_all(&target).map_err(|e| failed("creating the quarantine directory", e))?;
    // The log and the databases are on the node's disk (the operating system's in production,
    // where this is the same directory).
    disk.create_dir_all(&target)
        .map_err(|e| failed("creating the quarantine directory", e))?;
    // The marker first: a crash from here on finds it and completes the repair.
    let marker = format!("{}\nquarantined in {}\n", damage.what, target.display());
    write_atomically(data_dir, REPAIRING_FILE, marker.as_bytes())
        .map_err(|e| failed("writing the repair marker", e))?;
    disk.rename(&raft_dir, &target.join("raft"))
        .map_err(|e| failed("moving the log aside", e))?;
    let db_dir = config::db_dir(data_dir);
    if disk.exists(&db_dir) {
        disk.rename(&db_dir, &target.join("db"))
            .map_err(|e| failed("moving the databases aside", e))?;
    }
    disk.create_dir_all(&db_dir)
        .map_err(|e| failed("creating the database directory", e))?;
    // The moves are durable before the new log is.
    for dir in [&target, target.parent().unwrap_or(data_dir)] {
        disk.sync_dir(dir)
            .map_err(|e| failed("syncing the quarantine directory", e))?;
    }
    let mut log = SegmentLog::open_on(Arc::clone(disk), &raft_dir, Options::default())
        .map_err(|e| format!("creating an empty log: {e}"))?;
    log.save_hard_state(hard_state)
        .map_err(|e| failed("keeping the term and vote", e))?;
    drop(log);
    disk.sync_dir(data_dir)
        .map_err(|e| failed("syncing the data directory", e))?;
    warn!(
        "{}: moved the log and the databases to {}; this node will be rebuilt from the leader \
         (its vote is withheld until the cluster re-added it)",
        damage.what,
        target.display()
    );
    Ok(target)
}

/// Whether `DIR/members` names a voter other than `my_id`: one a repair can rebuild from.
pub fn repair_source_known(data_dir: &Path, my_id: u64) -> bool {
    read_members(data_dir)
        .iter()
        .any(|(id, _, voter)| *id != my_id && *voter)
}

/// What was found of the corrupt databases `found` (name, what SQLite said), for the log and
/// the marker.
pub fn describe_corrupt(found: &[(String, String)]) -> String {
    let named: Vec<String> = found
        .iter()
        .map(|(name, reason)| format!("database {name:?} is corrupt ({reason})"))
        .collect();
    named.join("; ")
}

/// Asks the cluster at `addresses` to remove node `id` (if it is a member) and add it back at
/// `address`, until both are answered or `stop`. Returns the leader's commit index once it
/// added the node (0 if it could not be read): the repair is over when this node applied it.
fn request_readd(
    tls: Option<atoll_net::tls::TlsContext>,
    addresses: &[String],
    id: u64,
    address: &str,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        leader_timeout: Duration::from_secs(5),
        tls,
        ..ClientConfig::default()
    };
    let mut pause = Duration::from_millis(100);
    let mut removed = false;
    // Bounded by `stop`: the node sets it when it stops.
    while !stop.load(Ordering::SeqCst) {
        let attempt = (|| -> Result<(), ClientError> {
            let mut client = Client::connect(addresses, config.clone())?;
            if !removed {
                let nodes = client.cluster()?;
                if nodes.iter().any(|n| n.id == id) {
                    client.remove(id)?;
                }
                removed = true;
                info!("repair: the cluster removed node {id}; adding it back");
            }
            let nodes = client.cluster()?;
            if !nodes.iter().any(|n| n.id == id) {
                client.add(id, address)?;
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => {
                // The leader's commit index now: what this node must hold to be whole again.
                let commit = Client::connect(addresses, config.clone())
                    .ok()
                    .and_then(|mut client| {
                        client.leader().ok()?;
                        let leader = client.leader_address()?.to_owned();
                        let mut connection =
                            atoll_net::client::Connection::connect_atoll(&leader, &config)
                                .ok()??;
                        connection.describe_v1().ok()
                    })
                    .map_or(0, |metadata| metadata.commit_index);
                return Ok(commit);
            }
            Err(e) => {
                warn!(
                    "repair: asking {} to re-add this node: {e}; retrying",
                    addresses.join(",")
                );
                thread::sleep(pause);
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
        }
    }
    Err("stopped before the cluster answered".into())
}

/// A repair in progress: the helper asking to be re-added.
pub(super) struct Repair {
    outcome: Receiver<Result<u64, String>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Repair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Node {
    /// Continues a repair if the marker is there: withholds the vote and starts the helper.
    pub(super) fn start_repair(&mut self) -> Result<(), NodeError> {
        if !is_repairing(&self.data_dir) {
            return Ok(());
        }
        self.raft.set_votes_withheld(true);
        let addresses: Vec<String> = read_members(&self.data_dir)
            .into_iter()
            .filter(|(id, _, _)| *id != self.config.id)
            .map(|(_, address, _)| address)
            .collect();
        if addresses.is_empty() {
            return Err(NodeError::Start(format!(
                "{} says a repair is under way but no other member is known: remove the \
                 node from the cluster and `atoll join` it again with an empty data directory",
                self.data_dir.join(REPAIRING_FILE).display()
            )));
        }
        let (sender, outcome) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let waker = self
            .reactor
            .waker()
            .map_err(|e| NodeError::Start(format!("creating the wake-up handle: {e}")))?;
        let (id, address) = (self.config.id, self.config.address.clone());
        let helper_stop = stop.clone();
        let tls = super::tls::load(&self.data_dir).map_err(NodeError::Start)?;
        info!(
            "repair: asking the cluster at {} to remove node {id} and add it back",
            addresses.join(",")
        );
        thread::Builder::new()
            .name("repair".into())
            .spawn(move || {
                let result = request_readd(tls, &addresses, id, &address, &helper_stop);
                let _ = sender.send(result);
                let _ = waker.wake();
            })
            .map_err(|e| NodeError::Start(format!("starting the repair thread: {e}")))?;
        self.repair = Some(Repair { outcome, stop });
        Ok(())
    }

    /// Once per turn: databases found corrupt since the last turn. With another voter to
    /// rebuild from, the node stops to be repaired (a leader hands over first; writes to the
    /// database are refused meanwhile); without one it goes on serving, refusing writes to it.
    pub(super) fn damage_step(&mut self) {
        let found = self.engine.take_corrupt_found();
        if found.is_empty() {
            return;
        }
        let what = describe_corrupt(&found);
        let me = atoll_raft::NodeId(self.config.id);
        // Both: the configuration says whom the cluster counts, the members file is what
        // `quarantine` (after the restart) reads.
        if !self.raft.configuration().voters().any(|id| id != me)
            || !repair_source_known(&self.data_dir, self.config.id)
        {
            warn!(
                "{what}: no other voter to repair it from; writes to it stay refused and no \
                 snapshot is sent (restore it with `atoll restore`)"
            );
            return;
        }
        if self.repair_requested.is_some() {
            warn!("{what} (a repair is under way already)");
            return;
        }
        let now = self.clock.now();
        let window = self
            .start_options
            .repair_again_after
            .unwrap_or(REPAIR_AGAIN_AFTER);
        if let Some(at) = self
            .repaired_at
            .filter(|at| now.saturating_duration_since(*at) < window)
        {
            error!(
                "{what}, {:?} after this node was rebuilt from the leader: not repairing again \
                 by itself (the leader's copy may be damaged: check with `atoll verify`); \
                 writes to it stay refused and no snapshot is sent",
                now.saturating_duration_since(at)
            );
            return;
        }
        let leading = self.raft.role() == StateRole::Leader;
        warn!(
            "{what}: {}restarting in place to be rebuilt from the leader",
            if leading {
                "handing leadership over, then "
            } else {
                ""
            }
        );
        self.repair_requested = Some(Damage { what });
    }

    /// Whether this node knows one of its databases damaged (found corrupt, or a repair asked
    /// for): a snapshot it sends could carry the damage to a follower, so none is sent (neither
    /// started nor continued; the follower gets one from a whole leader, or later).
    pub(super) fn snapshots_refused(&self) -> bool {
        self.repair_requested.is_some() || !self.engine.corrupt_databases().is_empty()
    }

    /// Whether applies wait: an apply found a closed database damaged less than
    /// [`DAMAGED_APPLY_RETRY`] ago.
    pub(super) fn damaged_apply_wait(&self, now: Instant) -> bool {
        self.damaged_apply_retry_at.is_some_and(|at| now < at)
    }

    /// Entry `index` cannot be applied: `database` is closed and cannot be opened again (its
    /// header page is damaged; the engine reported it, and `damage_step` repairs the node).
    /// Neither it nor a later entry is applied (skipping it would leave the database behind the
    /// log); they are retried after [`DAMAGED_APPLY_RETRY`], in case no repair happens.
    pub(super) fn damaged_apply_held(
        &mut self,
        index: u64,
        database: &str,
        reason: &str,
        now: Instant,
    ) {
        debug!("entry {index}: database {database:?} cannot be opened ({reason}): applies wait");
        self.damaged_apply_retry_at = Some(now + DAMAGED_APPLY_RETRY);
    }

    /// Once per turn: the helper's answer; on success the vote is given back. Then, once this
    /// node applied what the leader had committed when it was re-added, the repair is done.
    pub(super) fn repair_step(&mut self) {
        if let Some(target) = self.repair_catch_up {
            let applied = self.raft.applied().0;
            if applied >= target {
                info!("repair: finished; caught up with the leader (applied through {applied})");
                self.repair_catch_up = None;
            }
        }
        let Some(repair) = self.repair.as_mut() else {
            return;
        };
        match repair.outcome.try_recv() {
            Ok(Ok(commit)) => {
                self.repair = None;
                if let Err(e) = fs::remove_file(self.data_dir.join(REPAIRING_FILE))
                    .and_then(|()| fs::File::open(&self.data_dir)?.sync_all())
                {
                    error!("repair: removing the marker: {e}");
                }
                self.raft.set_votes_withheld(false);
                info!(
                    "repair: re-added to the cluster; catching up from the leader (its commit \
                     index {commit})"
                );
                self.repair_catch_up = Some(commit.max(1));
            }
            Ok(Err(why)) => {
                error!("repair: {why}");
                self.repair = None;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                error!("repair: the helper ended without an answer");
                self.repair = None;
            }
        }
    }

    /// REPAIR: this node's copy of `database` was found damaged (by `atoll verify`). The node
    /// stops (a leader hands over first, as on SIGTERM); the host then quarantines and starts
    /// it again in place ([`Node::reopen_repaired`]). Refused when no other voter could rebuild
    /// it.
    pub(super) fn request_repair(&mut self, database: &str) -> Result<(), String> {
        let me = atoll_raft::NodeId(self.config.id);
        if !self.raft.configuration().voters().any(|id| id != me) {
            return Err("this node is the only voter: there is no peer to repair it from".into());
        }
        if self.repair_requested.is_none() {
            warn!("database {database:?} reported damaged: stopping to be rebuilt from the leader");
            // The loop stops at its next turn, once the answer was flushed.
            self.repair_requested = Some(Damage {
                what: format!("database {database:?} reported damaged by atoll verify"),
            });
        }
        Ok(())
    }

    /// After [`Node::run`] returned (or [`Node::turn`] returned false and [`Node::stop`] ran):
    /// whether damage stopped the node, to be repaired by [`Node::reopen_repaired`].
    pub fn repair_requested(&self) -> bool {
        self.repair_requested.is_some()
    }

    /// After the loop stopped for a repair ([`Node::repair_requested`]): closes this node
    /// (the data directory's lock, the port), moves the damaged data aside ([`quarantine`]) and
    /// opens the node again from the empty log, in this process, with the same start options,
    /// clock and random source; it then asks to be re-added and is rebuilt from the leader.
    /// The host swaps its handles (the waker, the timings flag) for the new node's. When the
    /// data cannot be moved aside (nothing changed then), the node is reopened as it was.
    pub fn reopen_repaired(self) -> Result<Node, NodeError> {
        let (data_dir, id, damage, shutdown, options, inputs) = self.into_repair_parts();
        let damage = damage.expect("the loop stopped for a repair");
        match quarantine(&inputs.disk, &data_dir, id, &damage, inputs.clock.as_ref()) {
            Ok(_) => info!("repair: reopening node {id} from the empty log"),
            Err(why) => error!(
                "{}: not repaired from peers: {why}; reopening node {id} as it was",
                damage.what
            ),
        }
        let mut node = Node::open_with(&data_dir, shutdown, options, inputs)?;
        node.repaired_at = Some(node.clock.now());
        Ok(node)
    }

    /// What a restart in place keeps of this node; everything else (the engine, the log and
    /// its lock, the reactor and its port, the repair helper) is closed on return.
    fn into_repair_parts(
        self,
    ) -> (
        PathBuf,
        u64,
        Option<Damage>,
        Arc<AtomicBool>,
        super::StartOptions,
        super::inputs::Inputs,
    ) {
        let Node {
            data_dir,
            config,
            repair_requested,
            shutdown,
            start_options,
            clock,
            random,
            reactor,
            network_given,
            checkpoint_sync_in_background,
            mut log_sync,
            log_sync_given,
            files,
            ..
        } = self;
        // A transport handed in (a simulated one) stays; the reactor closes (its port is bound
        // again by the reopen).
        // A `LogSync` handed in (a simulated disk) stays, its request dropped with the log;
        // the sync thread ends (the reopen starts another).
        let log_sync = if log_sync_given {
            log_sync.reset();
            Some(log_sync)
        } else {
            drop(log_sync);
            None
        };
        let network = if network_given {
            Some(reactor)
        } else {
            drop(reactor);
            None
        };
        (
            data_dir,
            config.id,
            repair_requested,
            shutdown,
            start_options,
            super::inputs::Inputs {
                clock,
                random,
                network,
                checkpoint_sync_in_background,
                log_sync,
                disk: files,
            },
        )
    }

    /// Whether a repair is under way (for STATUS): damage found and the node about to restart,
    /// rebuilt from the leader (vote withheld), or catching up after it was re-added.
    pub(super) fn repairing(&self) -> bool {
        self.repair_requested.is_some()
            || self.raft.votes_withheld()
            || self.repair_catch_up.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::ManualClock;

    #[test]
    fn test_quarantine_is_named_after_the_clock_input() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path();
        fs::write(data_dir.join(MEMBERS_FILE), "1 a:1 voter\n2 b:1 voter\n").unwrap();
        let damage = Damage {
            what: "damaged".into(),
        };
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(90));
        let seconds = clock.unix_time().as_secs();
        for name in [seconds.to_string(), format!("{seconds}-1")] {
            drop(SegmentLog::open(config::raft_dir(data_dir), Options::default()).unwrap());
            let target = quarantine(
                &atoll_storage::StdDisk::shared(),
                data_dir,
                1,
                &damage,
                &clock,
            )
            .unwrap();
            assert_eq!(target, data_dir.join(QUARANTINE_DIR).join(name));
            assert!(target.join("raft").is_dir());
        }
    }
}

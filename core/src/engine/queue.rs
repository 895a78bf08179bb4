//! The write queue: per database, requests wait for the write slot, run as a chain on their
//! sessions' own connections (group commit: one command for up to `group_max` of them), and are
//! answered once that command is applied or discarded; a leader that steps down fails them.
//! Up to `chain_max` commands of a database are in flight at once, each computed on top of the
//! ones before it (the VFS overlay shows their frames to the chain's writers only).

use std::collections::VecDeque;

use super::request::run_target;
use super::{
    limits, Completion, Engine, Link, Member, Proposal, Response, SessionId, Slot, Txn, Waiter,
    Work,
};
use crate::command::{Command, CommandHeader};
use crate::error::ExecError;
use crate::lifecycle::WriteState;
use crate::vfs::{Conn, DbFiles};

impl Engine {
    pub(super) fn enqueue(
        &mut self,
        id: SessionId,
        database: &str,
        work: Work,
    ) -> Result<(), ExecError> {
        let queue_max = self.config.queue_max;
        let db = self.databases.get_mut(database).expect("checked by caller");
        if let Some(reason) = &db.corrupt {
            return Err(ExecError::Corrupt {
                database: database.to_string(),
                reason: reason.clone(),
            });
        }
        if db.queue.len() >= queue_max {
            return Err(ExecError::QueueFull {
                queued_max: queue_max,
            });
        }
        db.queue.push_back(Waiter {
            session: id,
            work,
            since: self.now,
        });
        let session = self.sessions.get_mut(&id).expect("checked by caller");
        session.state.transition(WriteState::Queued {
            database: database.to_string(),
            since: self.now,
        });
        Ok(())
    }

    /// Grants the write slot to queued work while it is free: a run of up to `group_max`
    /// requests goes as one chain (one command); work that may open a transaction goes alone.
    /// With commands in flight, autocommit work runs on top of them while the chain has room
    /// and the host reported where its last command went ([`Engine::proposed`]); work that
    /// may open a transaction waits until none is in flight.
    pub(super) fn pump(&mut self, database: &str) {
        // Bounded: every iteration removes at least one waiter from the queue.
        loop {
            let group_max = self.config.group_max;
            let chain_max = self.config.chain_max;
            let Some(db) = self.databases.get_mut(database) else {
                return;
            };
            let Some(front) = db.queue.front() else {
                return;
            };
            let runs = match &db.slot {
                Slot::Free => true,
                Slot::Transaction(_) => false,
                Slot::Chain(links) => {
                    let last = links.back().expect("a chain is never empty");
                    links.len() < chain_max && last.index.is_some() && !front.work.alone
                }
            };
            if !runs {
                return;
            }
            let mut waiters = Vec::new();
            while let Some(front) = db.queue.front() {
                if !waiters.is_empty() && (front.work.alone || waiters.len() >= group_max) {
                    break;
                }
                let waiter = db.queue.pop_front().expect("front exists");
                let alone = waiter.work.alone;
                waiters.push(waiter);
                if alone {
                    break;
                }
            }
            self.run_chain(database, waiters);
        }
    }

    /// Runs queued requests one after another, each on its session's own connection (so each
    /// has SQLite's per-connection semantics: TEMP objects, PRAGMAs, `changes()`, statement by
    /// statement execution), inside one chain ([`DbFiles::begin_chain`]): each sees what the
    /// ones before it committed, readers see none of it, and all of it goes as one command.
    /// A request that leaves a transaction open keeps the slot on top of the chain; the
    /// requests after it go back to the front of the queue.
    fn run_chain(&mut self, database: &str, waiters: Vec<Waiter>) {
        let db = self.databases.get_mut(database).expect("pumped");
        if let Err(error) = db.files.begin_chain() {
            let message = error.to_string();
            for waiter in waiters {
                let error = io_exec(std::io::Error::other(message.clone()));
                self.complete(waiter.session, Err(error));
            }
            return;
        }
        let mut members = Vec::new();
        let mut waiters = waiters.into_iter();
        while let Some(waiter) = waiters.next() {
            let id = waiter.session;
            if let Some(session) = self.sessions.get_mut(&id) {
                session.state.transition(WriteState::Executing {
                    database: database.to_string(),
                });
            }
            if let Some(reason) = self.databases[database].corrupt.clone() {
                // An earlier member found the database corrupt: nothing more is written.
                let database = database.to_string();
                self.complete(id, Err(ExecError::Corrupt { database, reason }));
                continue;
            }
            let outcome = self.run_member(database, waiter);
            let on_top = matches!(self.databases[database].slot, Slot::Chain(_));
            let outcome = match outcome {
                MemberOutcome::Transaction(result) if on_top => {
                    // Only work that may open a transaction runs alone, and never on top of
                    // commands in flight; should SQLite leave one open anyway, it cannot stay
                    // (the overlay is shown to this chain only).
                    self.roll_back_member(database, id);
                    let error = ExecError::Aborted(
                        "a transaction cannot stay open on top of writes in flight".to_string(),
                    );
                    MemberOutcome::Answer(result.and(Err(error)))
                }
                outcome => outcome,
            };
            let error = match &outcome {
                MemberOutcome::Member(member) => member.result.as_ref().err(),
                MemberOutcome::Answer(result) | MemberOutcome::Transaction(result) => {
                    result.as_ref().err()
                }
            };
            if let Some(error) = error.filter(|error| limits::is_corruption(error)) {
                let reason = error.client_message();
                self.mark_corrupt(database, &reason);
            }
            match outcome {
                MemberOutcome::Member(member) => members.push(member),
                MemberOutcome::Answer(result) => self.complete(id, result),
                MemberOutcome::Transaction(result) => {
                    let now = self.now;
                    let db = self.databases.get_mut(database).expect("pumped");
                    db.slot = Slot::Transaction(id);
                    db.transaction_since = now;
                    db.chain_members = members;
                    // The requests after it (still queued) wait for the transaction.
                    let rest: Vec<Waiter> = waiters.collect();
                    for waiter in rest.into_iter().rev() {
                        db.queue.push_front(waiter);
                    }
                    let session = self.sessions.get_mut(&id).expect("ran");
                    session.state.transition(WriteState::Transaction {
                        database: database.to_string(),
                    });
                    self.completions.push(Completion {
                        session: id,
                        result,
                    });
                    return;
                }
            }
        }
        self.end_chain(database, members);
    }

    /// Rolls back a session's transaction on `database` (it may not stay open).
    fn roll_back_member(&mut self, database: &str, id: SessionId) {
        if let Some(sdb) = self
            .sessions
            .get_mut(&id)
            .and_then(|session| session.databases.get_mut(database))
        {
            sdb.conn.rollback();
            sdb.txn = Txn::None;
        }
    }

    /// Runs one request of a chain on its session's connection.
    fn run_member(&mut self, database: &str, waiter: Waiter) -> MemberOutcome {
        let bytes_max = self.config.transaction_bytes_max;
        let now = self.now;
        let id = waiter.session;
        let db = self.databases.get_mut(database).expect("pumped");
        let Some(sdb) = self
            .sessions
            .get_mut(&id)
            .and_then(|session| session.databases.get_mut(database))
        else {
            return MemberOutcome::Answer(Err(ExecError::DatabaseNotOpen(database.to_string())));
        };
        let frames_before = live_max_frame(&db.files);
        let Work {
            target,
            params,
            query,
            ..
        } = waiter.work;
        let result = run_target(&mut sdb.conn, &target, &params, query, None).map(|(r, _)| r);
        let result = too_large(&db.files, result, bytes_max);
        if !sdb.conn.is_autocommit() {
            if sdb.txn == Txn::None {
                // The transaction time limit counts from here (`limits.rs`).
                sdb.txn_since = now;
            }
            match keep_transaction(&db.files, &mut sdb.conn) {
                Ok(()) if !db.files.capture_active() => {
                    // A transaction that has not written (`BEGIN; SELECT …`, or a write that
                    // failed): like SQLite's, it blocks no writer until it writes.
                    sdb.txn = Txn::Read;
                    return MemberOutcome::Answer(result);
                }
                Ok(()) => {
                    sdb.txn = Txn::Write;
                    return MemberOutcome::Transaction(result);
                }
                Err(error) => {
                    sdb.txn = Txn::None;
                    return MemberOutcome::Member(Member {
                        session: id,
                        result: Err(error),
                    });
                }
            }
        }
        sdb.txn = Txn::None;
        match result {
            Err(error) if live_max_frame(&db.files) == frames_before => {
                MemberOutcome::Answer(Err(error))
            }
            result => MemberOutcome::Member(Member {
                session: id,
                result,
            }),
        }
    }

    /// Closes the database's chain and proposes what it committed, answering `members` when
    /// it is applied (at once if nothing was committed).
    pub(super) fn end_chain(&mut self, database: &str, members: Vec<Member>) {
        let db = self.databases.get_mut(database).expect("open database");
        if let Err(error) = db.files.end_chain() {
            db.files.clear_committed();
            let message = error.to_string();
            for member in members {
                let error = io_exec(std::io::Error::other(message.clone()));
                self.complete(member.session, Err(error));
            }
            return;
        }
        self.finish_commit(database, members);
    }

    /// After a statement ran on a session's connection while its transaction held the write
    /// slot: keep the slot while the transaction is open; once it ends, propose the chain's
    /// frames (with the members that ran before the transaction) or release.
    pub(super) fn after_session_statement(
        &mut self,
        id: SessionId,
        database: &str,
        result: Result<Response, ExecError>,
    ) {
        let bytes_max = self.config.transaction_bytes_max;
        let session = self.sessions.get_mut(&id).expect("running session");
        let sdb = session.databases.get_mut(database).expect("open database");
        let db = self.databases.get_mut(database).expect("open database");
        let mut result = too_large(&db.files, result, bytes_max);
        if !sdb.conn.is_autocommit() {
            match keep_transaction(&db.files, &mut sdb.conn) {
                Ok(()) => {
                    session.state.transition(WriteState::Transaction {
                        database: database.to_string(),
                    });
                    self.completions.push(Completion {
                        session: id,
                        result,
                    });
                    return;
                }
                Err(error) => result = Err(error),
            }
        }
        sdb.txn = Txn::None;
        db.slot = Slot::Free;
        let mut members = std::mem::take(&mut db.chain_members);
        members.push(Member {
            session: id,
            result,
        });
        self.end_chain(database, members);
        self.pump(database);
    }

    /// Turns the frames the last transaction left in the capture buffer into a proposal whose
    /// application answers `members`; without frames, answers them at once.
    fn finish_commit(&mut self, database: &str, members: Vec<Member>) {
        let db = self.databases.get_mut(database).expect("open database");
        // The base: the command before it in the chain, or the last one applied.
        let base_index = match &db.slot {
            Slot::Free => db.last_command_index,
            Slot::Chain(links) => {
                let last = links.back().expect("a chain is never empty");
                last.index
                    .expect("a link is captured on one whose index is known")
            }
            Slot::Transaction(_) => panic!("a commit while a transaction holds the slot"),
        };
        let proposal = self.next_proposal;
        let header = CommandHeader {
            database,
            page_size: db.files.page_size(),
            db_size_pages: 0,
            base_index,
            origin: self.config.node_id,
            proposal,
        };
        let encoded = db.files.take_committed(proposal, |frames, committed| {
            let mut command = Vec::new();
            let header = CommandHeader {
                db_size_pages: committed.db_size_pages,
                ..header
            };
            Command::encode(&mut command, header, committed.frame_count, frames);
            command
        });
        match encoded {
            Err(error) => {
                let message = error.to_string();
                for member in members {
                    self.complete(
                        member.session,
                        Err(io_exec(std::io::Error::other(message.clone()))),
                    );
                }
            }
            Ok(None) => {
                for member in members {
                    self.complete(member.session, member.result);
                }
            }
            Ok(Some(command)) => {
                self.next_proposal = self.next_proposal.wrapping_add(1);
                for member in &members {
                    if let Some(session) = self.sessions.get_mut(&member.session) {
                        session.state.transition(WriteState::Proposed {
                            database: database.to_string(),
                            proposal,
                        });
                    }
                }
                let writes = members.len();
                let link = Link {
                    proposal,
                    members,
                    index: None,
                };
                let ahead = match &mut db.slot {
                    Slot::Chain(links) => {
                        links.push_back(link);
                        links.len() - 1
                    }
                    slot => {
                        *slot = Slot::Chain(VecDeque::from([link]));
                        0
                    }
                };
                self.proposals.push(Proposal {
                    database: database.to_string(),
                    id: proposal,
                    command,
                    writes,
                    ahead,
                });
            }
        }
    }

    /// Answers a session's request and returns it to `Idle` (sessions that went away are
    /// skipped). Sessions inside a transaction keep it.
    pub(super) fn complete(&mut self, id: SessionId, result: Result<Response, ExecError>) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let database = match &session.state {
            WriteState::Idle => None,
            WriteState::Queued { database, .. }
            | WriteState::Executing { database }
            | WriteState::Transaction { database }
            | WriteState::Proposed { database, .. } => Some(database.clone()),
        };
        match session.state {
            WriteState::Transaction { .. } => {}
            _ => session.state.transition(WriteState::Idle),
        }
        if let Some(database) = database {
            self.note_result(&database, result.as_ref().err());
        }
        self.completions.push(Completion {
            session: id,
            result,
        });
    }

    /// Proposals made since the last call, in order. The host proposes each to Raft.
    pub fn take_proposals(&mut self) -> Vec<Proposal> {
        std::mem::take(&mut self.proposals)
    }

    /// Responses produced since the last call (queued, grouped and applied requests).
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// The database whose chain holds `proposal`.
    fn database_of(&self, proposal: u64) -> Option<String> {
        self.databases
            .iter()
            .find(|(_, db)| match &db.slot {
                Slot::Chain(links) => links.iter().any(|link| link.proposal == proposal),
                _ => false,
            })
            .map(|(name, _)| name.clone())
    }

    /// The host proposed `proposal` and Raft put it at `index`: the next group of writers may
    /// run on top of it (its command's base index is `index`). Call it in log order, right
    /// after proposing, then [`Engine::run_queued`].
    pub fn proposed(&mut self, proposal: u64, index: u64) {
        let Some(name) = self.database_of(proposal) else {
            return;
        };
        let db = self.databases.get_mut(&name).expect("found");
        let Slot::Chain(links) = &mut db.slot else {
            unreachable!("found in a chain")
        };
        let position = links
            .iter()
            .position(|link| link.proposal == proposal)
            .expect("found");
        if let Some(before) = position.checked_sub(1) {
            let earlier = links[before].index.expect("links are proposed in order");
            assert!(earlier < index, "link at {index} after one at {earlier}");
        }
        links[position].index = Some(index);
    }

    /// Commands in flight (proposed, not yet applied or discarded), all databases.
    pub fn commands_in_flight(&self) -> usize {
        self.databases
            .values()
            .map(|db| match &db.slot {
                Slot::Chain(links) => links.len(),
                _ => 0,
            })
            .sum()
    }

    /// Runs queued writers of every database that has room on top of its commands in flight,
    /// one group each (what arrived while they were out, committed together). The host calls it
    /// once per turn of its loop, before taking the proposals; without it, queued writers run
    /// when the commands ahead of them are applied.
    pub fn run_queued(&mut self) {
        let names: Vec<String> = self
            .databases
            .iter()
            .filter(|(_, db)| !db.queue.is_empty() && matches!(db.slot, Slot::Chain(_)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.pump(&name);
        }
    }

    /// The proposal could not be committed (leadership lost, proposal dropped): its sessions,
    /// and those of every command after it in its chain (computed on top of it), are answered
    /// with an error, and the next writers go on top of the commands before it. The database
    /// never saw their frames. If the same command is nevertheless committed later, `apply`
    /// applies it like any other.
    pub fn discard(&mut self, proposal: u64, reason: &str) {
        let Some(name) = self.database_of(proposal) else {
            return;
        };
        let db = self.databases.get_mut(&name).expect("found");
        let Slot::Chain(links) = &mut db.slot else {
            unreachable!("found in a chain")
        };
        let position = links
            .iter()
            .position(|link| link.proposal == proposal)
            .expect("found");
        let dropped: Vec<Link> = links.drain(position..).collect();
        if links.is_empty() {
            db.slot = Slot::Free;
        }
        db.files.discard_links_from(proposal);
        self.fail_links(dropped, reason);
        self.pump(&name);
    }

    /// Fails every command in flight for `database` (none of them will be applied).
    pub(super) fn fail_chain(&mut self, database: &str, reason: &str) {
        let db = self.databases.get_mut(database).expect("known database");
        if let Slot::Chain(links) = std::mem::replace(&mut db.slot, Slot::Free) {
            db.files.discard_links();
            self.fail_links(links.into(), reason);
        }
    }

    fn fail_links(&mut self, links: Vec<Link>, reason: &str) {
        for link in links {
            for member in link.members {
                self.complete(
                    member.session,
                    Err(ExecError::Discarded(reason.to_string())),
                );
            }
        }
    }

    /// This node stopped being the leader: queued writers fail, open write transactions are
    /// rolled back (their sessions learn it at their next request), and outstanding proposals
    /// are answered with an error. Proposed commands that Raft still commits are applied anyway.
    pub fn abandon_writes(&mut self, reason: &str) {
        let names: Vec<String> = self.databases.keys().cloned().collect();
        for name in names {
            self.abort_local_writes(&name, reason);
            let db = self.databases.get_mut(&name).expect("listed");
            let waiters: Vec<Waiter> = db.queue.drain(..).collect();
            for waiter in waiters {
                self.complete(
                    waiter.session,
                    Err(ExecError::Discarded(reason.to_string())),
                );
            }
        }
    }

    /// Rolls back a session transaction holding the slot of `database` and fails the commands
    /// in flight for it.
    pub(super) fn abort_local_writes(&mut self, database: &str, reason: &str) {
        let db = self.databases.get_mut(database).expect("known database");
        match db.slot {
            Slot::Transaction(id) => {
                db.slot = Slot::Free;
                if let Some(session) = self.sessions.get_mut(&id) {
                    if let Some(sdb) = session.databases.get_mut(database) {
                        sdb.conn.rollback();
                        sdb.txn = Txn::None;
                        sdb.aborted = Some(reason.to_string());
                    }
                    session.state.transition(WriteState::Idle);
                }
                if let Err(error) = db.files.end_chain() {
                    log::error!("{database}: closing an abandoned chain: {error}");
                }
                db.files.clear_committed();
                for member in std::mem::take(&mut db.chain_members) {
                    self.complete(
                        member.session,
                        Err(ExecError::Discarded(reason.to_string())),
                    );
                }
            }
            Slot::Chain(_) => self.fail_chain(database, reason),
            Slot::Free => {}
        }
    }
}

fn io_exec(error: std::io::Error) -> ExecError {
    ExecError::Io(error)
}

/// What one request of a chain came to.
enum MemberOutcome {
    /// It is a member: answered with the chain's command.
    Member(Member),
    /// It committed nothing: answered now.
    Answer(Result<Response, ExecError>),
    /// It left a transaction open: it holds the slot, on top of the chain.
    Transaction(Result<Response, ExecError>),
}

/// `mxFrame` of the live wal-index header (0 before SQLite initialised it).
fn live_max_frame(files: &DbFiles) -> u32 {
    files
        .index_header()
        .ok()
        .flatten()
        .map_or(0, |header| header.max_frame)
}

/// A failed statement that overflowed the capture limit is reported as too large.
fn too_large(
    files: &DbFiles,
    result: Result<Response, ExecError>,
    bytes_max: usize,
) -> Result<Response, ExecError> {
    let overflow = files.take_overflow();
    result.map_err(|error| match error {
        ExecError::Sqlite(_) if overflow => ExecError::TransactionTooLarge { bytes_max },
        other => other,
    })
}

/// A connection was left inside a transaction. If the chain committed nothing so far, the
/// transaction continues (it holds the slot; readers see nothing until it commits). A
/// transaction opened after statements of the chain committed (`INSERT …; BEGIN; …` or
/// `COMMIT; BEGIN` in one request) would have to stay open on top of frames no reader may see
/// yet; SQLite cannot keep them apart from its own (a write transaction treats every frame
/// past the published header as its own and may rewrite it in place), so it is rolled back
/// with an error. What committed before it stays.
fn keep_transaction(files: &DbFiles, conn: &mut Conn) -> Result<(), ExecError> {
    if !files.chain_committed() {
        return Ok(());
    }
    conn.rollback();
    Err(ExecError::Aborted(
        "a transaction opened after statements that committed in the same request cannot \
         stay open: send BEGIN in a request of its own"
            .to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, Reply, Target};
    use crate::value::Value;

    /// Runs the proposals out as a host would: each into the log, the engine told where.
    fn propose(engine: &mut Engine, log: &mut Vec<Vec<u8>>) {
        engine.run_queued();
        for proposal in engine.take_proposals() {
            log.push(proposal.command);
            engine.proposed(proposal.id, log.len() as u64);
        }
    }

    fn insert(engine: &mut Engine, who: i64) -> Reply {
        let session = engine.open_session().unwrap();
        engine.open_database(session, "d").unwrap();
        let sql = "INSERT INTO t VALUES (?, zeroblob(3000))";
        engine
            .exec(session, "d", Target::Sql(sql), &[Value::Integer(who)])
            .unwrap()
    }

    #[test]
    fn test_overlay_predicts_the_bytes_apply_writes() {
        // Commands in flight are laid out as the apply path will write them: applying the first
        // leaves exactly the wal-index header the overlay predicted for it, so the links behind
        // it are never laid out again. Only a checkpoint that starts the WAL over (TRUNCATE)
        // moves the applied state elsewhere: then the next chain lays them out again.
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, _) = Engine::open(EngineConfig::new(dir.path(), 1)).unwrap();
        let mut log = Vec::new();
        let admin = engine.open_session().unwrap();
        engine.open_database(admin, "d").unwrap();
        let schema = Target::Sql("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)");
        engine.exec(admin, "d", schema, &[]).unwrap();
        propose(&mut engine, &mut log);
        engine.apply(1, &log[0]).unwrap();
        let relayouts = |engine: &Engine| engine.databases["d"].files.overlay_relayouts();
        for who in 0..4 {
            insert(&mut engine, who);
            propose(&mut engine, &mut log);
        }
        assert_eq!(log.len(), 5, "four commands in flight");
        for (index, who) in (2..=3).zip(4..) {
            engine
                .apply(index, &log[index as usize - 1].clone())
                .unwrap();
            assert_eq!(insert(&mut engine, who), Reply::Queued);
            propose(&mut engine, &mut log);
        }
        assert_eq!(log.len(), 7);
        assert_eq!(
            relayouts(&engine),
            0,
            "the apply wrote other bytes than predicted"
        );
        engine.apply(4, &log[3].clone()).unwrap();
        engine.checkpoint(true).unwrap();
        insert(&mut engine, 10);
        propose(&mut engine, &mut log);
        assert_eq!(log.len(), 8);
        assert_eq!(relayouts(&engine), 1);
        for index in 5..=log.len() as u64 {
            engine
                .apply(index, &log[index as usize - 1].clone())
                .unwrap();
        }
        assert!(matches!(engine.databases["d"].slot, Slot::Free));
    }
}

//! Commands in flight: a database's next group of writers runs on top of proposed, unapplied
//! commands (a chain), each command based on the one before it. Applied in order, a chain gives
//! the bytes the same writes give one at a time; readers never see a command before its apply;
//! a discarded link takes the links after it along; a follower ends byte-identical.

mod common;

use std::collections::HashMap;
use std::path::Path;

use atoll_core::command::Command;
use atoll_core::{
    Applied, Engine, EngineConfig, ExecError, Proposal, Reply, Response, SessionId, Target, Value,
};
use common::*;

const DB: &str = "c.db";
const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, who INTEGER UNIQUE, \
                      pad BLOB)";
const INSERT: &str = "INSERT INTO t(who, pad) VALUES (?, ?)";

/// A leader and a follower over a log in memory where proposing and applying are separate
/// steps, as Raft separates them: commands stay in flight in between.
struct Chained {
    _dirs: Vec<tempfile::TempDir>,
    leader: Engine,
    follower: Engine,
    log: Vec<Vec<u8>>,
    /// Entries applied on both.
    applied: usize,
    /// Answers taken from the leader so far.
    answers: HashMap<SessionId, Result<Response, ExecError>>,
    /// The most commands in flight seen at once.
    in_flight_max: usize,
}

impl Chained {
    fn new(chain_max: usize) -> Chained {
        let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let open = |dir: &Path, node: u64| {
            let mut config: EngineConfig = config(dir, node);
            config.chain_max = chain_max;
            Engine::open(config).unwrap().0
        };
        let leader = open(dirs[0].path(), 1);
        let follower = open(dirs[1].path(), 2);
        let mut chained = Chained {
            _dirs: dirs,
            leader,
            follower,
            log: Vec::new(),
            applied: 0,
            answers: HashMap::new(),
            in_flight_max: 0,
        };
        let admin = session(&mut chained.leader, DB);
        chained
            .leader
            .exec(admin, DB, Target::Sql(SCHEMA), &[])
            .unwrap();
        chained.propose();
        chained.apply_all();
        chained
    }

    /// What the host does at the end of a turn, before proposing: queued writers run on top of
    /// the commands in flight; returns the new proposals.
    fn take(&mut self) -> Vec<Proposal> {
        self.leader.run_queued();
        self.leader.take_proposals()
    }

    /// Raft took `proposal`: it goes into the log and the engine learns where.
    fn accept(&mut self, proposal: &Proposal) -> u64 {
        self.log.push(proposal.command.clone());
        let index = self.log.len() as u64;
        self.leader.proposed(proposal.id, index);
        self.in_flight_max = self.in_flight_max.max(self.log.len() - self.applied);
        index
    }

    /// Takes and accepts until no proposal is left (each accept may let another group run on
    /// top); returns the indexes.
    fn propose(&mut self) -> Vec<u64> {
        let mut indexes = Vec::new();
        for _ in 0..64 {
            let proposals = self.take();
            if proposals.is_empty() {
                return indexes;
            }
            for proposal in &proposals {
                indexes.push(self.accept(proposal));
            }
        }
        panic!("proposals never stopped");
    }

    /// Applies the next entry on both engines (they must agree on what became of it).
    fn apply_next(&mut self) -> Applied {
        let index = self.applied as u64 + 1;
        let command = self.log[self.applied].clone();
        let on_leader = self.leader.apply(index, &command).unwrap();
        let on_follower = self.follower.apply(index, &command).unwrap();
        match (&on_leader, &on_follower) {
            (Applied::Stale { .. }, Applied::Stale { .. }) => {}
            _ => assert_eq!(on_leader, on_follower, "entry {index}"),
        }
        self.applied += 1;
        self.collect();
        on_leader
    }

    /// Applies every entry in the log, proposing what the applies let run.
    fn apply_all(&mut self) {
        for _ in 0..10_000 {
            self.propose();
            if self.applied == self.log.len() {
                return;
            }
            self.apply_next();
        }
        panic!("the log never drained");
    }

    fn collect(&mut self) {
        for completion in self.leader.take_completions() {
            let previous = self.answers.insert(completion.session, completion.result);
            assert!(
                previous.is_none(),
                "{:?} answered twice",
                completion.session
            );
        }
    }

    fn answer(&mut self, session: SessionId) -> Option<Result<Response, ExecError>> {
        self.collect();
        self.answers.remove(&session)
    }

    fn insert(&mut self, session: SessionId, who: i64) -> Reply {
        self.leader
            .exec(session, DB, Target::Sql(INSERT), &insert_params(who))
            .unwrap()
    }

    fn rows(engine: &mut Engine) -> Vec<Value> {
        let reader = session(engine, DB);
        let rows = query_all(engine, reader, DB, "SELECT id, who, pad FROM t ORDER BY id");
        engine.close_session(reader);
        rows.values
    }

    fn whos(engine: &mut Engine) -> Vec<i64> {
        Chained::rows(engine)
            .chunks(3)
            .map(|row| match row[1] {
                Value::Integer(who) => who,
                ref other => panic!("who is {other:?}"),
            })
            .collect()
    }

    /// Both engines checkpoint everything (TRUNCATE); their database files must then be equal.
    fn assert_files_equal(&mut self) -> Vec<u8> {
        self.leader.checkpoint(true).unwrap();
        self.follower.checkpoint(true).unwrap();
        let leader = std::fs::read(self.leader.database_path(DB).unwrap()).unwrap();
        let follower = std::fs::read(self.follower.database_path(DB).unwrap()).unwrap();
        assert!(leader == follower, "leader and follower files differ");
        leader
    }
}

fn insert_params(who: i64) -> Vec<Value> {
    let mut prng = Prng::new(who as u64);
    let pad: Vec<u8> = (0..700).map(|_| prng.below(256) as u8).collect();
    vec![Value::Integer(who), Value::Blob(pad)]
}

/// The same writes, one at a time, on a plain SQLite file: the rows the chain must end with.
fn sqlite_rows(whos: &[i64]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let connection = rusqlite::Connection::open(dir.path().join("plain.db")).unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    for &who in whos {
        let params = insert_params(who);
        let Value::Blob(pad) = &params[1] else {
            unreachable!()
        };
        connection
            .execute(INSERT, rusqlite::params![who, pad])
            .unwrap();
    }
    let mut statement = connection
        .prepare("SELECT id, who, pad FROM t ORDER BY id")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok([
                Value::Integer(row.get(0)?),
                Value::Integer(row.get(1)?),
                Value::Blob(row.get(2)?),
            ])
        })
        .unwrap();
    rows.flat_map(|row| row.unwrap()).collect()
}

fn command_frames(command: &[u8]) -> Vec<(u32, Vec<u8>)> {
    Command::decode(command)
        .unwrap()
        .frames()
        .map(|frame| (frame.page_number, frame.page.to_vec()))
        .collect()
}

fn is_discarded(answer: Option<Result<Response, ExecError>>, reason: &str) -> bool {
    matches!(answer, Some(Err(ExecError::Discarded(r))) if r.contains(reason))
}

#[test]
fn test_chain_applied_in_order_is_the_writes_one_at_a_time() {
    // 16 writers, each its own command, proposed as soon as it ran: up to four in flight, each
    // computed on top of the ones before it. Another engine runs the same writes one at a time,
    // each applied before the next runs. Every command carries the same pages (the chain saw
    // exactly the state sequential execution sees), each is based on the entry before it, and
    // both end with the rows plain SQLite gives, the follower with the leader's bytes.
    let mut chained = Chained::new(4);
    let mut sequential = Cluster::new(0);
    let admin = session(&mut sequential.leader, DB);
    sequential.write(admin, DB, SCHEMA, &[]).unwrap();
    let whos: Vec<i64> = (0..16).collect();
    let sessions: Vec<SessionId> = whos
        .iter()
        .map(|_| session(&mut chained.leader, DB))
        .collect();
    for (&who, &s) in whos.iter().zip(&sessions) {
        chained.insert(s, who);
        if chained.propose().is_empty() {
            // The chain is full: the oldest command is applied, the writer goes on top.
            chained.apply_next();
            assert_eq!(chained.propose().len(), 1);
        }
        let s = session(&mut sequential.leader, DB);
        sequential
            .write(s, DB, INSERT, &insert_params(who))
            .unwrap();
    }
    assert_eq!(chained.in_flight_max, 4);
    chained.apply_all();
    for &s in &sessions {
        assert!(matches!(chained.answer(s), Some(Ok(_))));
    }
    assert_eq!(chained.log.len(), sequential.log.len());
    for (i, (a, b)) in chained.log.iter().zip(&sequential.log).enumerate() {
        assert_eq!(command_frames(a), command_frames(b), "command {}", i + 1);
        let base = Command::decode(a).unwrap().base_index;
        assert_eq!(
            base,
            i as u64,
            "command {} is based on the entry before it",
            i + 1
        );
    }
    let expected = sqlite_rows(&whos);
    assert!(Chained::rows(&mut chained.leader) == expected);
    assert!(Chained::rows(&mut chained.follower) == expected);
    let bytes = chained.assert_files_equal();
    sequential.leader.checkpoint(true).unwrap();
    let sequential_bytes = std::fs::read(sequential.leader.database_path(DB).unwrap()).unwrap();
    assert!(bytes == sequential_bytes, "the chain wrote other bytes");
}

#[test]
fn test_groups_on_top_of_commands_in_flight_readers_see_only_applied() {
    // Rounds of writers arrive while commands are out: each round runs as one group on top of
    // them, up to four commands in flight; applies come in a seeded random rhythm. After every
    // step a reader on the leader and one on the follower see exactly the rows of the applied
    // commands, a reader whose transaction began before the chain keeps its snapshot, and the
    // end state is plain SQLite's for the same writes in the same order.
    let seed = seed(7);
    let mut prng = Prng::new(seed);
    let mut chained = Chained::new(4);
    let early = session(&mut chained.leader, DB);
    chained
        .leader
        .exec(early, DB, Target::Sql("BEGIN"), &[])
        .unwrap();
    let snapshot = query_all(&mut chained.leader, early, DB, "SELECT count(*) FROM t");
    let mut whos = Vec::new();
    // Per log entry (after the schema), the writers of the command.
    let mut next_who = 0;
    let mut pending: Vec<(SessionId, i64)> = Vec::new();
    for _round in 0..40 {
        for _ in 0..prng.below(5) + 1 {
            let s = session(&mut chained.leader, DB);
            let reply = chained.insert(s, next_who);
            assert!(matches!(reply, Reply::Proposed { .. } | Reply::Queued));
            whos.push(next_who);
            pending.push((s, next_who));
            next_who += 1;
        }
        chained.propose();
        for _ in 0..prng.below(3) {
            if chained.applied < chained.log.len() {
                chained.apply_next();
            }
        }
        // What the applied commands hold, and nothing more.
        let applied: Vec<i64> = {
            let mut done = Vec::new();
            pending.retain(|&(s, who)| match chained.answers.remove(&s) {
                Some(Ok(_)) => {
                    done.push(who);
                    false
                }
                Some(Err(e)) => panic!("writer {who}: {e}"),
                None => true,
            });
            done
        };
        let _ = applied;
        let seen = Chained::whos(&mut chained.leader);
        let unanswered: Vec<i64> = pending.iter().map(|&(_, who)| who).collect();
        assert!(
            seen.iter().all(|who| !unanswered.contains(who)),
            "a reader saw a write in flight"
        );
        assert_eq!(seen.len() + unanswered.len(), whos.len());
        assert_eq!(Chained::whos(&mut chained.follower), seen);
        let still = query_all(&mut chained.leader, early, DB, "SELECT count(*) FROM t");
        assert_eq!(still.values, snapshot.values);
    }
    assert!(
        chained.in_flight_max >= 3,
        "chains of {}",
        chained.in_flight_max
    );
    chained.apply_all();
    chained.collect();
    chained
        .leader
        .exec(early, DB, Target::Sql("COMMIT"), &[])
        .unwrap();
    let expected = sqlite_rows(&whos);
    assert!(Chained::rows(&mut chained.leader) == expected);
    assert!(Chained::rows(&mut chained.follower) == expected);
    chained.assert_files_equal();
}

/// Three single-writer commands in flight (the log holds them); returns their sessions, whos
/// and indexes.
fn three_in_flight(chained: &mut Chained, first_who: i64) -> Vec<(SessionId, i64, u64)> {
    let mut links = Vec::new();
    for who in first_who..first_who + 3 {
        let s = session(&mut chained.leader, DB);
        chained.insert(s, who);
        let indexes = chained.propose();
        assert_eq!(indexes.len(), 1);
        links.push((s, who, indexes[0]));
    }
    links
}

#[test]
fn test_refused_link_is_discarded_next_writer_on_what_remains() {
    // Two commands are in the log; a third, computed on top of them, is refused by Raft (the
    // leader is busy): its writer gets the refusal. A writer that queued meanwhile runs on top
    // of the two accepted commands (based on the second), and those three apply.
    let mut chained = Chained::new(4);
    let mut accepted = Vec::new();
    for who in 0..2 {
        let s = session(&mut chained.leader, DB);
        chained.insert(s, who);
        accepted.push((s, chained.propose()[0]));
    }
    let refused = session(&mut chained.leader, DB);
    assert_eq!(chained.insert(refused, 2), Reply::Queued);
    let proposals = chained.take();
    assert_eq!(proposals.len(), 1);
    let next = session(&mut chained.leader, DB);
    assert_eq!(chained.insert(next, 3), Reply::Queued);
    assert!(
        chained.take().is_empty(),
        "on top of a command not yet in the log"
    );
    chained.leader.discard(proposals[0].id, "busy");
    assert!(is_discarded(chained.answer(refused), "busy"));
    assert_eq!(chained.propose(), vec![4]);
    let base = Command::decode(&chained.log[3]).unwrap().base_index;
    assert_eq!(base, accepted[1].1, "based on the second command");
    chained.apply_all();
    for s in [accepted[0].0, accepted[1].0, next] {
        assert!(matches!(chained.answer(s), Some(Ok(_))));
    }
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[0, 1, 3]));
    chained.assert_files_equal();
}

#[test]
fn test_leadership_lost_fails_the_chain_applied_anyway_if_committed() {
    // Three commands are out when the leader steps down: all three writers, and one queued
    // behind them, are told "leadership lost" (the outcome is unknown to them). The next leader
    // commits the three anyway: they apply on both engines like any replicated write, and the
    // old leader's next writer (leader again) starts on that applied state.
    let mut chained = Chained::new(4);
    let links = three_in_flight(&mut chained, 0);
    let queued = session(&mut chained.leader, DB);
    assert_eq!(chained.insert(queued, 50), Reply::Queued);
    chained.leader.abandon_writes("leadership lost");
    for s in links.iter().map(|l| l.0).chain([queued]) {
        assert!(is_discarded(chained.answer(s), "leadership lost"));
    }
    for _ in 0..3 {
        assert!(matches!(chained.apply_next(), Applied::Frames { .. }));
    }
    let next = session(&mut chained.leader, DB);
    chained.insert(next, 3);
    assert_eq!(chained.propose(), vec![5]);
    chained.apply_all();
    assert!(matches!(chained.answer(next), Some(Ok(_))));
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[0, 1, 2, 3]));
    chained.assert_files_equal();
}

#[test]
fn test_replicated_write_in_place_of_the_chain_fails_it() {
    // Two commands are out when another leader's write takes their place in the log (Raft
    // truncated them): applying it fails both writers, and the next writer runs on the new
    // applied state, not on the dropped frames.
    let mut chained = Chained::new(4);
    let links = three_in_flight(&mut chained, 0);
    chained.log.truncate(chained.applied);
    let other = session(&mut chained.follower, DB);
    let reply = chained
        .follower
        .exec(other, DB, Target::Sql(INSERT), &insert_params(70))
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    let command = chained.follower.take_proposals().remove(0).command;
    chained.log.push(command);
    assert!(matches!(chained.apply_next(), Applied::Frames { .. }));
    for (s, _, _) in &links {
        assert!(is_discarded(chained.answer(*s), "replicated write"));
    }
    let next = session(&mut chained.leader, DB);
    assert!(matches!(chained.insert(next, 3), Reply::Proposed { .. }));
    chained.propose();
    chained.apply_all();
    assert!(matches!(chained.answer(next), Some(Ok(_))));
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[70, 3]));
    chained.assert_files_equal();
}

#[test]
fn test_stale_link_at_apply_fails_it_and_the_rest() {
    // The first of three commands in flight turns out stale at apply (its base is not the
    // database's last command: forged here, as no honest log produces it): it and the two
    // computed on top of it fail, all three are no-ops on both engines, and the next writer runs
    // on the applied state.
    let mut chained = Chained::new(4);
    let links = three_in_flight(&mut chained, 0);
    let first = links[0].2 as usize - 1;
    chained.log[first][20..28].copy_from_slice(&999u64.to_le_bytes());
    for _ in 0..3 {
        assert!(matches!(chained.apply_next(), Applied::Stale { .. }));
    }
    for (s, _, _) in &links {
        assert!(is_discarded(
            chained.answer(*s),
            "computed against command 999"
        ));
    }
    let next = session(&mut chained.leader, DB);
    chained.insert(next, 3);
    chained.propose();
    chained.apply_all();
    assert!(matches!(chained.answer(next), Some(Ok(_))));
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[3]));
    chained.assert_files_equal();
}

#[test]
fn test_duplicate_of_an_earlier_runs_command_is_not_the_first_link() {
    // Proposal ids start over when an engine is reopened. An old command this node proposed in
    // its earlier run, proposed again (a duplicate of old bytes, as a retried commit would be),
    // carries this node's origin and the id of the new run's first link, but sits at another
    // index than the host said that link is at: it is not the link. It is rejected as stale on
    // both engines (it once tripped the leader's assertion that a link applies where it was
    // proposed), and the link applies after it and answers its writer.
    let mut chained = Chained::new(4);
    let first = session(&mut chained.leader, DB);
    chained.insert(first, 1);
    chained.propose();
    chained.apply_all();
    assert!(matches!(chained.answer(first), Some(Ok(_))));
    // The leader restarts: its next proposal is id 1 again, the id of the schema's command.
    let dir = chained._dirs[0].path().to_path_buf();
    let spare = tempfile::tempdir().unwrap();
    let placeholder = Engine::open(config(spare.path(), 9)).unwrap().0;
    drop(std::mem::replace(&mut chained.leader, placeholder));
    let (mut leader, recovery) = Engine::open(config(&dir, 1)).unwrap();
    let from = recovery.replay_from().unwrap_or(0);
    for (position, command) in chained.log.iter().enumerate() {
        if position as u64 + 1 > from {
            leader.apply(position as u64 + 1, command).unwrap();
        }
    }
    chained.leader = leader;
    // Session ids start over too: the earlier run's answers are not this run's.
    chained.answers.clear();
    let schema = Command::decode(&chained.log[0]).unwrap();
    assert_eq!((schema.origin, schema.proposal), (1, 1));
    let duplicate = chained.log[0].clone();
    chained.log.push(duplicate);
    let writer = session(&mut chained.leader, DB);
    assert!(matches!(chained.insert(writer, 2), Reply::Proposed { .. }));
    let proposals = chained.take();
    assert_eq!(proposals.len(), 1);
    assert_eq!(proposals[0].id, 1, "ids start over in a new run");
    let at = chained.accept(&proposals[0]);
    assert_eq!(at, chained.log.len() as u64);
    assert!(matches!(chained.apply_next(), Applied::Stale { .. }));
    let early = chained.answer(writer);
    assert!(early.is_none(), "answered by another command: {early:?}");
    assert!(matches!(chained.apply_next(), Applied::Frames { .. }));
    assert!(matches!(chained.answer(writer), Some(Ok(_))));
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[1, 2]));
    chained.assert_files_equal();
}

#[test]
fn test_checkpoint_while_commands_in_flight() {
    // A forced checkpoint (TRUNCATE: the WAL starts over) runs while two commands are out; a
    // third goes on top of them afterwards. The frames in flight are laid out again on the new
    // WAL, and everything applies to the rows plain SQLite gives.
    let mut chained = Chained::new(4);
    three_in_flight(&mut chained, 0);
    chained.leader.checkpoint(true).unwrap();
    let s = session(&mut chained.leader, DB);
    chained.insert(s, 3);
    assert_eq!(chained.propose().len(), 1);
    assert_eq!(chained.log.len() - chained.applied, 4);
    chained.apply_next();
    chained.leader.checkpoint(true).unwrap();
    let s = session(&mut chained.leader, DB);
    chained.insert(s, 4);
    assert_eq!(chained.propose().len(), 1);
    chained.apply_all();
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[0, 1, 2, 3, 4]));
    chained.assert_files_equal();
}

#[test]
fn test_chain_is_bounded_and_transactions_wait_for_it() {
    // With at most two commands in flight, a third writer waits for an apply; a session that
    // opens a transaction waits until no command is in flight (it cannot stay open on top of
    // frames that are not the database's yet), then holds the slot as usual.
    let mut chained = Chained::new(2);
    let first = session(&mut chained.leader, DB);
    chained.insert(first, 0);
    let second = session(&mut chained.leader, DB);
    chained.insert(second, 1);
    assert_eq!(chained.propose().len(), 2);
    let third = session(&mut chained.leader, DB);
    assert_eq!(chained.insert(third, 2), Reply::Queued);
    let transaction = session(&mut chained.leader, DB);
    let reply = chained
        .leader
        .exec(transaction, DB, Target::Sql("BEGIN IMMEDIATE"), &[])
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    assert!(chained.propose().is_empty(), "a third command in flight");
    chained.apply_next();
    assert_eq!(chained.propose().len(), 1, "the third writer goes on top");
    assert!(chained.answer(transaction).is_none());
    chained.apply_next();
    assert!(
        chained.answer(transaction).is_none(),
        "a transaction on top of a command"
    );
    chained.apply_next();
    assert!(matches!(chained.answer(transaction), Some(Ok(_))));
    chained
        .leader
        .exec(transaction, DB, Target::Sql(INSERT), &insert_params(3))
        .unwrap();
    chained
        .leader
        .exec(transaction, DB, Target::Sql("COMMIT"), &[])
        .unwrap();
    chained.apply_all();
    assert!(Chained::rows(&mut chained.leader) == sqlite_rows(&[0, 1, 2, 3]));
}

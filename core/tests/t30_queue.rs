//! The write queue: FIFO service of many concurrent writers in groups, the bounded wait, the
//! bounded length, and transactions that disconnect while holding the write slot.

mod common;

use atoll_core::{Engine, ExecError, Reply, Target, Value};
use common::*;

fn setup(cluster: &mut Cluster) -> atoll_core::SessionId {
    let admin = session(&mut cluster.leader, "q.db");
    cluster
        .write(
            admin,
            "q.db",
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, who INTEGER UNIQUE)",
            &[],
        )
        .unwrap();
    admin
}

fn whos(engine: &mut Engine, session: atoll_core::SessionId) -> Vec<Value> {
    query_all(engine, session, "q.db", "SELECT who FROM t ORDER BY id").values
}

#[test]
fn test_many_writers_served_in_fifo_order_in_groups() {
    // 40 sessions write at once: the first runs alone, the rest queue; each apply grants the next
    // group (up to group_max) as one command. Rows land in request order, every session is
    // answered once, and far fewer commands than writes were proposed.
    let mut cluster = Cluster::new(1);
    let admin = setup(&mut cluster);
    let sessions: Vec<_> = (0..40)
        .map(|_| session(&mut cluster.leader, "q.db"))
        .collect();
    let mut replies = Vec::new();
    for (who, s) in sessions.iter().enumerate() {
        let reply = cluster
            .leader
            .exec(
                *s,
                "q.db",
                Target::Sql("INSERT INTO t(who) VALUES (?)"),
                &[Value::Integer(who as i64)],
            )
            .unwrap();
        replies.push(reply);
    }
    assert!(matches!(replies[0], Reply::Proposed { .. }));
    assert!(replies[1..].iter().all(|r| *r == Reply::Queued));
    let log_before = cluster.log.len();
    cluster.commit_all();
    let commands = cluster.log.len() - log_before;
    assert!(commands <= 3, "40 writes took {commands} commands");
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 40);
    for completion in &completions {
        assert!(completion.result.is_ok(), "{:?}", completion.result);
    }
    let expected: Vec<Value> = (0..40).map(Value::Integer).collect();
    assert_eq!(whos(&mut cluster.leader, admin), expected);
    let follower_session = session(&mut cluster.followers[0], "q.db");
    assert_eq!(whos(&mut cluster.followers[0], follower_session), expected);
}

#[test]
fn test_group_member_error_is_its_own() {
    // A group where one member violates a UNIQUE constraint: that member alone is rolled back
    // to its savepoint and answered with SQLite's constraint error; the others commit.
    let mut cluster = Cluster::new(1);
    let admin = setup(&mut cluster);
    let first = session(&mut cluster.leader, "q.db");
    let members: Vec<_> = (0..5)
        .map(|_| session(&mut cluster.leader, "q.db"))
        .collect();
    cluster
        .leader
        .exec(
            first,
            "q.db",
            Target::Sql("INSERT INTO t(who) VALUES (100)"),
            &[],
        )
        .unwrap();
    for (i, s) in members.iter().enumerate() {
        let who = if i == 2 { 100 } else { i as i64 };
        let reply = cluster
            .leader
            .exec(
                *s,
                "q.db",
                Target::Sql("INSERT INTO t(who) VALUES (?)"),
                &[Value::Integer(who)],
            )
            .unwrap();
        assert_eq!(reply, Reply::Queued);
    }
    cluster.commit_all();
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 6);
    for completion in completions {
        if completion.session == members[2] {
            let error = completion.result.unwrap_err();
            assert_eq!(
                error.code(),
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
                "{error}"
            );
        } else {
            assert!(completion.result.is_ok());
        }
    }
    assert_eq!(
        whos(&mut cluster.leader, admin),
        vec![100, 0, 1, 3, 4]
            .into_iter()
            .map(Value::Integer)
            .collect::<Vec<_>>()
    );
}

#[test]
fn test_waiting_behind_a_transaction_past_the_bound_is_busy() {
    // A transaction holds the write slot; a writer queued behind it fails with SQLITE_BUSY
    // "database is locked" once the host's clock passes `transaction_wait_max` (500), and the
    // transaction is unaffected.
    let mut cluster = Cluster::new(0);
    let admin = setup(&mut cluster);
    let holder = session(&mut cluster.leader, "q.db");
    let waiter = session(&mut cluster.leader, "q.db");
    cluster.leader.set_time(1_000);
    cluster
        .write(holder, "q.db", "BEGIN IMMEDIATE", &[])
        .unwrap();
    cluster
        .write(holder, "q.db", "INSERT INTO t(who) VALUES (1)", &[])
        .unwrap();
    let reply = cluster
        .leader
        .exec(
            waiter,
            "q.db",
            Target::Sql("INSERT INTO t(who) VALUES (2)"),
            &[],
        )
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    cluster.leader.set_time(1_000 + 499);
    assert!(cluster.leader.take_completions().is_empty());
    cluster.leader.set_time(1_000 + 500);
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 1);
    assert!(matches!(
        completions[0].result,
        Err(ExecError::Locked { waited: 500 })
    ));
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().to_string(),
        "database is locked"
    );
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().code(),
        rusqlite::ffi::SQLITE_BUSY
    );
    cluster.write(holder, "q.db", "COMMIT", &[]).unwrap();
    assert_eq!(whos(&mut cluster.leader, admin), vec![Value::Integer(1)]);
}

#[test]
fn test_disconnect_mid_transaction_rolls_back_and_releases() {
    // A session takes the write slot with an open transaction, writes, and goes away. Its work
    // is rolled back and the queued writer behind it gets the slot and commits.
    let mut cluster = Cluster::new(1);
    let admin = setup(&mut cluster);
    let holder = session(&mut cluster.leader, "q.db");
    let waiter = session(&mut cluster.leader, "q.db");
    cluster.write(holder, "q.db", "BEGIN", &[]).unwrap();
    cluster
        .write(holder, "q.db", "INSERT INTO t(who) VALUES (1)", &[])
        .unwrap();
    let reply = cluster
        .leader
        .exec(
            waiter,
            "q.db",
            Target::Sql("INSERT INTO t(who) VALUES (2)"),
            &[],
        )
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    cluster.leader.close_session(holder);
    cluster.commit_all();
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].session, waiter);
    assert!(completions[0].result.is_ok());
    assert_eq!(whos(&mut cluster.leader, admin), vec![Value::Integer(2)]);
    let other = session(&mut cluster.followers[0], "q.db");
    assert_eq!(
        whos(&mut cluster.followers[0], other),
        vec![Value::Integer(2)]
    );
    assert_eq!(cluster.leader.integrity_check("q.db").unwrap(), vec!["ok"]);
}

#[test]
fn test_queue_is_bounded() {
    // Past queue_max waiting writers, a new writer is refused at once with a busy error.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.queue_max = 2;
    let (mut engine, _) = Engine::open(config).unwrap();
    let sessions: Vec<_> = (0..4).map(|_| session(&mut engine, "q.db")).collect();
    let replies: Vec<_> = sessions
        .iter()
        .map(|s| {
            engine.exec(
                *s,
                "q.db",
                Target::Sql("CREATE TABLE IF NOT EXISTS x(a)"),
                &[],
            )
        })
        .collect();
    assert!(matches!(replies[0], Ok(Reply::Proposed { .. })));
    assert!(matches!(replies[1], Ok(Reply::Queued)));
    assert!(matches!(replies[2], Ok(Reply::Queued)));
    let error = replies[3].as_ref().unwrap_err();
    assert!(matches!(error, ExecError::QueueFull { queued_max: 2 }));
    assert_eq!(error.code(), rusqlite::ffi::SQLITE_BUSY);
    // A request while one is outstanding on the same session is refused too.
    assert!(matches!(
        engine.exec(sessions[1], "q.db", Target::Sql("SELECT 1"), &[]),
        Err(ExecError::RequestInProgress)
    ));
}

#[test]
fn test_begin_immediate_behind_comments_takes_the_write_slot() {
    // `BEGIN IMMEDIATE` and `BEGIN EXCLUSIVE` take SQLite's write lock at once, so they must go
    // through the write slot, however the text is dressed: comments before or inside the
    // keywords, leading semicolons, mixed case. The engine asks SQLite (the statement's
    // bytecode), not the first words. A writer from another session then queues behind the
    // transaction and succeeds once it commits; had the BEGIN slipped past the slot, that
    // writer would be granted the slot and fail on SQLite's lock ("database is locked").
    for begin in [
        "/*c*/ BEGIN IMMEDIATE",
        "-- x\nBEGIN IMMEDIATE",
        "BEGIN/**/IMMEDIATE",
        " ;; begin Exclusive TRANSACTION;",
        "/* a */ -- b\n bEgIn /* c */ immediate",
    ] {
        let mut cluster = Cluster::new(0);
        let admin = setup(&mut cluster);
        let holder = session(&mut cluster.leader, "q.db");
        let waiter = session(&mut cluster.leader, "q.db");
        cluster.write(holder, "q.db", begin, &[]).unwrap();
        let reply = cluster
            .leader
            .exec(
                waiter,
                "q.db",
                Target::Sql("INSERT INTO t(who) VALUES (2)"),
                &[],
            )
            .unwrap();
        assert_eq!(reply, Reply::Queued, "{begin:?}");
        cluster
            .write(holder, "q.db", "INSERT INTO t(who) VALUES (1)", &[])
            .unwrap();
        cluster
            .leader
            .exec(holder, "q.db", Target::Sql("COMMIT"), &[])
            .unwrap();
        cluster.commit_all();
        let completions = cluster.leader.take_completions();
        assert_eq!(completions.len(), 2, "{begin:?}: {completions:?}");
        for completion in &completions {
            assert!(completion.result.is_ok(), "{begin:?}: {completions:?}");
        }
        assert_eq!(
            whos(&mut cluster.leader, admin),
            vec![Value::Integer(1), Value::Integer(2)],
            "{begin:?}"
        );
    }
}

#[test]
fn test_transaction_control_behind_comments_is_never_grouped() {
    // Writers queue behind a proposal; one of them opens a write transaction (`BEGIN IMMEDIATE`
    // or `EXCLUSIVE`: deferred ones take the read path), its keywords dressed in comments, case
    // and semicolons. It must run alone, first of its own chain: grouped after
    // another writer's committed statements, the transaction could not stay open and would be
    // refused ("send BEGIN in a request of its own"). The engine asks SQLite's bytecode.
    for begin in [
        "/*c*/ BEGIN IMMEDIATE",
        "-- x\nbegin immediate",
        " ;; BeGiN/**/ExClUsIvE",
        "/* a */ BEGIN/**/EXCLUSIVE TRANSACTION;",
    ] {
        let mut cluster = Cluster::new(0);
        let admin = setup(&mut cluster);
        let first = session(&mut cluster.leader, "q.db");
        let second = session(&mut cluster.leader, "q.db");
        let opener = session(&mut cluster.leader, "q.db");
        let mut exec = |session, sql| {
            cluster
                .leader
                .exec(session, "q.db", Target::Sql(sql), &[])
                .unwrap()
        };
        assert!(matches!(
            exec(first, "INSERT INTO t(who) VALUES (1)"),
            Reply::Proposed { .. }
        ));
        assert_eq!(exec(second, "INSERT INTO t(who) VALUES (2)"), Reply::Queued);
        assert_eq!(exec(opener, begin), Reply::Queued, "{begin:?}");
        cluster.commit_all();
        let completions = cluster.leader.take_completions();
        assert_eq!(completions.len(), 3, "{begin:?}: {completions:?}");
        for completion in &completions {
            assert!(completion.result.is_ok(), "{begin:?}: {completions:?}");
        }
        cluster
            .write(opener, "q.db", "INSERT INTO t(who) VALUES (3)", &[])
            .unwrap();
        cluster
            .leader
            .exec(opener, "q.db", Target::Sql("COMMIT"), &[])
            .unwrap();
        cluster.commit_all();
        assert_eq!(
            whos(&mut cluster.leader, admin),
            (1..=3).map(Value::Integer).collect::<Vec<_>>(),
            "{begin:?}"
        );
    }
}

//! Guards against one client or one bad file hurting the node: no wait inside SQLite (busy
//! timeout 0), transactions rolled back past their time limit, corrupt databases refusing
//! writes, the database limit, and SQL bytes prepared per session.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use atoll_core::{Engine, ExecError, Reply, Target, Value};
use common::{query_all, session, Cluster};

fn is_aborted(result: Result<Reply, ExecError>) -> String {
    match result {
        Err(ExecError::Aborted(reason)) => reason,
        other => panic!("expected an aborted transaction, got {other:?}"),
    }
}

/// A forced (TRUNCATE) checkpoint while a client holds a read transaction used to wait in
/// rusqlite's 5 s busy handler, on the host's loop thread. It must come back at once, not
/// complete, and complete once the reader is gone.
#[test]
fn test_checkpoint_blocked_by_a_reader_returns_at_once() {
    let mut cluster = Cluster::new(0);
    let writer = session(&mut cluster.leader, "db");
    cluster
        .write(writer, "db", "CREATE TABLE t(x)", &[])
        .unwrap();
    let reader = session(&mut cluster.leader, "db");
    cluster
        .leader
        .exec(reader, "db", Target::Sql("BEGIN"), &[])
        .unwrap();
    query_all(&mut cluster.leader, reader, "db", "SELECT count(*) FROM t");
    for i in 0..20 {
        cluster
            .write(
                writer,
                "db",
                "INSERT INTO t VALUES (?)",
                &[Value::Integer(i)],
            )
            .unwrap();
    }
    let applied = cluster.log.len() as u64;
    let started = Instant::now();
    let index = cluster.leader.checkpoint(true).unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "checkpoint took {took:?}"
    );
    assert!(
        index.is_some_and(|i| i < applied),
        "{index:?} with a reader"
    );

    cluster
        .leader
        .exec(reader, "db", Target::Sql("COMMIT"), &[])
        .unwrap();
    assert_eq!(cluster.leader.checkpoint(true).unwrap(), Some(applied));
}

#[test]
fn test_transactions_open_past_the_limit_are_rolled_back() {
    // The queued writer below waits out the holder's limit instead of being answered "database
    // is locked" after `transaction_wait_max` (500 by default, before the limit).
    let mut cluster = Cluster::with_config(0, |c| {
        c.transaction_time_max = 1_000;
        c.transaction_wait_max = 5_000;
    });
    let writer = session(&mut cluster.leader, "db");
    cluster
        .write(writer, "db", "CREATE TABLE t(x)", &[])
        .unwrap();
    cluster.leader.set_time(10_000);

    // A reader: its snapshot is released, its next request fails, later ones work.
    let reader = session(&mut cluster.leader, "db");
    cluster
        .leader
        .exec(reader, "db", Target::Sql("BEGIN"), &[])
        .unwrap();
    query_all(&mut cluster.leader, reader, "db", "SELECT count(*) FROM t");
    // A writer inside an explicit transaction holds the write slot.
    let holder = session(&mut cluster.leader, "db");
    for sql in ["BEGIN", "INSERT INTO t VALUES (1)"] {
        let reply = cluster.leader.exec(holder, "db", Target::Sql(sql), &[]);
        assert!(matches!(reply, Ok(Reply::Done(_))), "{sql}: {reply:?}");
    }
    // Another writer queues behind it.
    let queued = cluster
        .leader
        .exec(writer, "db", Target::Sql("INSERT INTO t VALUES (2)"), &[])
        .unwrap();
    assert!(matches!(queued, Reply::Queued));

    cluster.leader.set_time(10_999);
    assert!(cluster.leader.take_completions().is_empty());
    cluster.leader.set_time(11_000);
    // The holder's slot went to the queued writer, which proposed.
    assert_eq!(cluster.commit_all(), 1);
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].session, writer);
    assert!(completions[0].result.is_ok());

    let reason = is_aborted(
        cluster
            .leader
            .exec(reader, "db", Target::Sql("COMMIT"), &[]),
    );
    assert!(reason.contains("stayed open"), "{reason}");
    let reason = is_aborted(
        cluster
            .leader
            .exec(holder, "db", Target::Sql("COMMIT"), &[]),
    );
    assert!(reason.contains("stayed open"), "{reason}");
    // The holder's insert is gone, the queued one is in.
    let rows = query_all(&mut cluster.leader, reader, "db", "SELECT x FROM t");
    assert_eq!(rows.values, vec![Value::Integer(2)]);
    // Autocommit requests have no transaction to time out.
    cluster.leader.set_time(50_000);
    query_all(&mut cluster.leader, reader, "db", "SELECT x FROM t");
}

/// Overwrites the b-tree page header of page `page` of `path` with bytes no page has.
fn corrupt_page(path: &std::path::Path, page: u64, page_size: u64) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start((page - 1) * page_size)).unwrap();
    file.write_all(&[0x55; 16]).unwrap();
    file.sync_all().unwrap();
}

fn fill(cluster: &mut Cluster, db: &str) {
    let s = session(&mut cluster.leader, db);
    cluster.write(s, db, "CREATE TABLE t(x TEXT)", &[]).unwrap();
    for i in 0..50 {
        let text = Value::Text(format!("{i:0>600}"));
        cluster
            .write(s, db, "INSERT INTO t VALUES (?)", &[text])
            .unwrap();
    }
    cluster.leader.close_session(s);
}

/// Closes the leader's engine (an engine on an empty directory takes its place).
fn close_leader(cluster: &mut Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = Engine::open(common::config(dir.path(), 1)).unwrap().0;
    cluster.dirs.push(dir);
    drop(std::mem::replace(&mut cluster.leader, stand_in));
}

fn reopen(cluster: &mut Cluster, tweak: impl Fn(&mut atoll_core::EngineConfig)) -> Engine {
    let mut config = common::config(cluster.dirs[0].path(), 1);
    tweak(&mut config);
    let (mut engine, recovery) = Engine::open(config).unwrap();
    let from = recovery.replay_from().unwrap_or(0);
    for (i, command) in cluster.log.iter().enumerate().skip(from as usize) {
        engine.apply(i as u64 + 1, command).unwrap();
    }
    engine
}

#[test]
fn test_a_corrupt_page_found_at_open_refuses_writes() {
    let mut cluster = Cluster::new(0);
    fill(&mut cluster, "bad");
    fill(&mut cluster, "good");
    cluster.leader.checkpoint(true).unwrap();
    let path = cluster.leader.database_path("bad").unwrap().to_path_buf();
    close_leader(&mut cluster);
    corrupt_page(&path, 2, 4096);

    let mut engine = reopen(&mut cluster, |_| {});
    let corrupt = engine.corrupt_databases();
    assert_eq!(corrupt.len(), 1, "{corrupt:?}");
    assert_eq!(corrupt[0].0, "bad");
    let s = session(&mut engine, "bad");
    let write = engine.exec(s, "bad", Target::Sql("INSERT INTO t VALUES ('x')"), &[]);
    match write {
        Err(error @ ExecError::Corrupt { .. }) => {
            assert_eq!(error.code(), 11);
            assert!(error.to_string().contains("refused"), "{error}");
        }
        other => panic!("expected a refused write, got {other:?}"),
    }
    assert!(engine.take_proposals().is_empty());
    // The other database serves reads and writes.
    let g = session(&mut engine, "good");
    let rows = query_all(&mut engine, g, "good", "SELECT count(*) FROM t");
    assert_eq!(rows.values, vec![Value::Integer(50)]);
    let reply = engine
        .exec(g, "good", Target::Sql("INSERT INTO t VALUES ('y')"), &[])
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
}

#[test]
fn test_a_corrupt_page_found_by_a_query_refuses_writes() {
    let mut cluster = Cluster::new(0);
    fill(&mut cluster, "bad");
    cluster.leader.checkpoint(true).unwrap();
    let path = cluster.leader.database_path("bad").unwrap().to_path_buf();
    close_leader(&mut cluster);
    corrupt_page(&path, 2, 4096);

    // No check at open: the first query that reads the page finds it.
    let mut engine = reopen(&mut cluster, |c| c.open_check_budget = Duration::ZERO);
    assert!(engine.corrupt_databases().is_empty());
    let s = session(&mut engine, "bad");
    // Before: a write would have been accepted.
    let read = engine.query(s, "bad", Target::Sql("SELECT count(*) FROM t"), &[]);
    match read {
        Err(error) => assert_eq!(error.code() & 0xff, 11, "{error}"),
        Ok(reply) => panic!("a read of a corrupt page answered {reply:?}"),
    }
    assert_eq!(engine.corrupt_databases().len(), 1);
    let write = engine.exec(s, "bad", Target::Sql("CREATE TABLE u(y)"), &[]);
    assert!(matches!(write, Err(ExecError::Corrupt { .. })), "{write:?}");
}

/// Writers queued behind a transaction run as one chain once it commits. The first finds the
/// corrupt page; the ones after it in the same chain are refused without running (they touch
/// no damaged page, so before the merge of chains and guards they ran and were replicated).
#[test]
fn test_a_corrupt_page_found_in_a_chain_stops_the_chain() {
    let mut cluster = Cluster::new(0);
    fill(&mut cluster, "bad");
    cluster.leader.checkpoint(true).unwrap();
    let path = cluster.leader.database_path("bad").unwrap().to_path_buf();
    close_leader(&mut cluster);
    corrupt_page(&path, 2, 4096);
    cluster.leader = reopen(&mut cluster, |c| c.open_check_budget = Duration::ZERO);
    assert!(cluster.leader.corrupt_databases().is_empty());

    let holder = session(&mut cluster.leader, "bad");
    let reply = cluster
        .leader
        .exec(holder, "bad", Target::Sql("BEGIN; CREATE TABLE u(y)"), &[]);
    assert!(matches!(reply, Ok(Reply::Done(_))), "{reply:?}");
    let finds = session(&mut cluster.leader, "bad");
    let after: Vec<_> = (0..2)
        .map(|_| session(&mut cluster.leader, "bad"))
        .collect();
    let reply = cluster
        .leader
        .exec(finds, "bad", Target::Sql("INSERT INTO t VALUES ('x')"), &[]);
    assert!(matches!(reply, Ok(Reply::Queued)), "{reply:?}");
    for (i, &s) in after.iter().enumerate() {
        let sql = format!("CREATE TABLE v{i}(z)");
        let reply = cluster.leader.exec(s, "bad", Target::Sql(&sql), &[]);
        assert!(matches!(reply, Ok(Reply::Queued)), "{reply:?}");
    }
    let reply = cluster
        .leader
        .exec(holder, "bad", Target::Sql("COMMIT"), &[]);
    assert!(matches!(reply, Ok(Reply::Proposed { .. })), "{reply:?}");
    // The holder's commit, and nothing after it.
    assert_eq!(cluster.commit_all(), 1);
    let completions = cluster.leader.take_completions();
    let result = |s| {
        let found = completions.iter().find(|c| c.session == s);
        found.expect("answered").result.as_ref().map(|_| ())
    };
    assert!(result(holder).is_ok());
    match result(finds) {
        Err(error) => assert_eq!(error.code() & 0xff, 11, "{error}"),
        Ok(()) => panic!("an insert into a corrupt page succeeded"),
    }
    for &s in &after {
        let error = result(s).unwrap_err();
        assert!(matches!(error, ExecError::Corrupt { .. }), "{error:?}");
    }
    assert_eq!(cluster.leader.corrupt_databases().len(), 1);
}

#[test]
fn test_database_limit() {
    let mut cluster = Cluster::with_config(0, |c| c.databases_max = 3);
    let s = cluster.leader.open_session().unwrap();
    for name in ["a", "b", "c"] {
        cluster.leader.open_database(s, name).unwrap();
    }
    match cluster.leader.open_database(s, "d") {
        Err(error @ ExecError::TooManyDatabases { databases_max: 3 }) => {
            assert!(error.to_string().contains("too many databases"), "{error}");
        }
        other => panic!("expected the limit, got {other:?}"),
    }
    assert_eq!(cluster.leader.database_names().len(), 3);
    // An existing one still opens.
    let t = cluster.leader.open_session().unwrap();
    cluster.leader.open_database(t, "b").unwrap();
}

#[test]
fn test_prepared_sql_bytes_per_session() {
    let mut cluster = Cluster::with_config(0, |c| c.statement_bytes_max = 64 * 1024);
    let s = session(&mut cluster.leader, "db");
    let big = format!("SELECT '{}'", "x".repeat(30 * 1024));
    let first = cluster.leader.prepare(s, "db", &big).unwrap().0;
    cluster.leader.prepare(s, "db", &big).unwrap();
    match cluster.leader.prepare(s, "db", &big) {
        Err(error @ ExecError::Limit(_)) => {
            assert!(error.to_string().contains("bytes of SQL"), "{error}")
        }
        other => panic!("expected the limit, got {other:?}"),
    }
    // Finalizing gives the bytes back; other sessions have their own budget.
    cluster.leader.finalize(s, first).unwrap();
    cluster.leader.prepare(s, "db", &big).unwrap();
    let t = session(&mut cluster.leader, "db");
    cluster.leader.prepare(t, "db", &big).unwrap();
}

/// A forced checkpoint used to rewrite (and fdatasync) the record of every database, changed
/// or not: with hundreds of databases, seconds of stalled loop. Idle ones now advance together
/// in one file; recovery reads it, and a later write to one of them is replayed as usual.
#[test]
fn test_a_forced_checkpoint_advances_idle_databases_with_one_write() {
    let mut cluster = Cluster::new(0);
    let names: Vec<String> = (0..20).map(|i| format!("db{i}")).collect();
    for name in &names {
        let s = session(&mut cluster.leader, name);
        cluster.write(s, name, "CREATE TABLE t(x)", &[]).unwrap();
    }
    cluster.leader.checkpoint(true).unwrap();
    // Writes to db0 only: the other 19 stay idle.
    let s = session(&mut cluster.leader, "db0");
    for i in 0..5 {
        cluster
            .write(s, "db0", "INSERT INTO t VALUES (?)", &[Value::Integer(i)])
            .unwrap();
    }
    let dir = cluster.dirs[0].path().to_path_buf();
    let record = |name: &str| std::fs::read(dir.join(format!("{name}-atoll"))).unwrap();
    let before: Vec<Vec<u8>> = names[1..].iter().map(|n| record(n)).collect();
    let applied = cluster.log.len() as u64;
    assert_eq!(cluster.leader.checkpoint(true).unwrap(), Some(applied));
    let after: Vec<Vec<u8>> = names[1..].iter().map(|n| record(n)).collect();
    assert!(before == after, "idle databases' records were rewritten");
    for name in &names {
        assert_eq!(cluster.leader.checkpoint_index(name), Some(applied));
    }

    // One more write, to an idle database, then a crash (no checkpoint).
    let t = session(&mut cluster.leader, "db7");
    cluster
        .write(t, "db7", "INSERT INTO t VALUES (70)", &[])
        .unwrap();
    close_leader(&mut cluster);
    let (mut engine, recovery) = Engine::open(common::config(&dir, 1)).unwrap();
    assert_eq!(recovery.replay_from(), Some(applied));
    for database in &recovery.databases {
        assert_eq!(database.checkpoint_index, applied, "{database:?}");
    }
    for (i, command) in cluster.log.iter().enumerate().skip(applied as usize) {
        engine.apply(i as u64 + 1, command).unwrap();
    }
    let u = session(&mut engine, "db7");
    let rows = query_all(&mut engine, u, "db7", "SELECT x FROM t");
    assert_eq!(rows.values, vec![Value::Integer(70)]);
    let v = session(&mut engine, "db0");
    let rows = query_all(&mut engine, v, "db0", "SELECT count(*) FROM t");
    assert_eq!(rows.values, vec![Value::Integer(5)]);
}

/// More databases than may be open at once: idle ones are closed (and reopened on use), a
/// follower applying to many databases stays within the limit, a snapshot carries the closed
/// ones, a restart opens no more than the limit, and OPEN fails only when every open database
/// is in use.
#[test]
fn test_idle_databases_are_closed_and_reopened() {
    let mut cluster = Cluster::with_config(1, |c| c.databases_max = 3);
    let names: Vec<String> = (0..10).map(|i| format!("db{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let s = session(&mut cluster.leader, name);
        cluster.write(s, name, "CREATE TABLE t(x)", &[]).unwrap();
        cluster
            .write(
                s,
                name,
                "INSERT INTO t VALUES (?)",
                &[Value::Integer(i as i64)],
            )
            .unwrap();
        cluster.leader.close_session(s);
        assert!(cluster.leader.open_database_count() <= 3);
        assert!(cluster.followers[0].open_database_count() <= 3);
    }
    assert_eq!(cluster.leader.database_names(), names);
    assert_eq!(cluster.followers[0].database_names(), names);
    // Each reads back its own data, closed and opened again in turn.
    for (i, name) in names.iter().enumerate().rev() {
        let s = session(&mut cluster.leader, name);
        let rows = query_all(&mut cluster.leader, s, name, "SELECT x FROM t");
        assert_eq!(rows.values, vec![Value::Integer(i as i64)]);
        cluster
            .write(s, name, "INSERT INTO t VALUES (100)", &[])
            .unwrap();
        cluster.leader.close_session(s);
    }
    let applied = cluster.log.len() as u64;
    assert_eq!(cluster.leader.checkpoint(true).unwrap(), Some(applied));

    // Three sessions hold three databases open: a fourth cannot be opened until one goes.
    let held: Vec<_> = names[..3]
        .iter()
        .map(|name| session(&mut cluster.leader, name))
        .collect();
    let s = cluster.leader.open_session().unwrap();
    match cluster.leader.open_database(s, "db5") {
        Err(error @ ExecError::TooManyDatabases { databases_max: 3 }) => {
            assert!(error.to_string().contains("in use"), "{error}")
        }
        other => panic!("expected the open limit, got {other:?}"),
    }
    cluster.leader.close_session(held[0]);
    cluster.leader.open_database(s, "db5").unwrap();

    // A snapshot carries every database, closed or open.
    let mut snapshot = cluster.leader.snapshot().unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut snapshot, &mut bytes).unwrap();
    drop(snapshot);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), 9);
    config.databases_max = 3;
    let (mut node, _) = Engine::open(config).unwrap();
    node.install_snapshot(&mut bytes.as_slice()).unwrap();
    assert_eq!(node.database_names(), names);
    assert!(node.open_database_count() <= 3);
    for (i, name) in names.iter().enumerate() {
        let n = session(&mut node, name);
        let rows = query_all(&mut node, n, name, "SELECT x FROM t ORDER BY x");
        assert_eq!(
            rows.values,
            vec![Value::Integer(i as i64), Value::Integer(100)],
            "{name}"
        );
        node.close_session(n);
    }

    // A restart opens at most three; the others open on use.
    close_leader(&mut cluster);
    let mut config = common::config(cluster.dirs[0].path(), 1);
    config.databases_max = 3;
    let (mut engine, recovery) = Engine::open(config).unwrap();
    assert_eq!(recovery.databases.len(), 10);
    assert_eq!(recovery.replay_from(), Some(applied));
    assert!(engine.open_database_count() <= 3);
    let s = session(&mut engine, "db9");
    let rows = query_all(&mut engine, s, "db9", "SELECT count(*) FROM t");
    assert_eq!(rows.values, vec![Value::Integer(2)]);
}

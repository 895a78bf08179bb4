//! Semantics of the write path: hidden and discarded writes, snapshot isolation of readers
//! during apply, writing queries, size limits, interactive transactions, stale commands, and
//! the guard against PRAGMAs that would break replication.

mod common;

use atoll_core::{Applied, Engine, ExecError, Reply, Response, Target, Value};
use common::*;

fn count(engine: &mut Engine, session: atoll_core::SessionId, db: &str) -> Value {
    query_all(engine, session, db, "SELECT count(*) FROM t").values[0].clone()
}

#[test]
fn test_discarded_write_leaves_no_trace() {
    // A proposal that fails (leadership lost) is discarded: its session gets an error, the
    // database and its files are exactly as before, and the next writer proceeds normally.
    let mut cluster = Cluster::new(1);
    let s = session(&mut cluster.leader, "d.db");
    cluster.write(s, "d.db", "CREATE TABLE t(x)", &[]).unwrap();
    cluster.leader.checkpoint(true).unwrap();
    let path = cluster.leader.database_path("d.db").unwrap().to_path_buf();
    let main_before = std::fs::read(&path).unwrap();
    let wal_before = std::fs::read(format!("{}-wal", path.display())).unwrap();
    let reply = cluster
        .leader
        .exec(s, "d.db", Target::Sql("INSERT INTO t VALUES (1), (2)"), &[])
        .unwrap();
    let Reply::Proposed { proposal } = reply else {
        panic!("{reply:?}")
    };
    let proposals = cluster.leader.take_proposals();
    assert_eq!(proposals.len(), 1);
    cluster.leader.discard(proposal, "leadership lost");
    let completions = cluster.leader.take_completions();
    assert!(matches!(
        completions[0].result,
        Err(ExecError::Discarded(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), main_before);
    assert_eq!(
        std::fs::read(format!("{}-wal", path.display())).unwrap(),
        wal_before
    );
    assert_eq!(count(&mut cluster.leader, s, "d.db"), Value::Integer(0));
    cluster
        .write(s, "d.db", "INSERT INTO t VALUES (3)", &[])
        .unwrap();
    assert_eq!(count(&mut cluster.leader, s, "d.db"), Value::Integer(1));
    let f = session(&mut cluster.followers[0], "d.db");
    assert_eq!(
        count(&mut cluster.followers[0], f, "d.db"),
        Value::Integer(1)
    );
    assert_eq!(cluster.leader.integrity_check("d.db").unwrap(), vec!["ok"]);
}

#[test]
fn test_reader_keeps_its_snapshot_during_apply() {
    // A reader inside a transaction keeps seeing the state it started with while writes are
    // applied under it (on the leader and on a follower); it sees them once it starts again.
    let mut cluster = Cluster::new(1);
    let s = session(&mut cluster.leader, "r.db");
    cluster.write(s, "r.db", "CREATE TABLE t(x)", &[]).unwrap();
    cluster
        .write(s, "r.db", "INSERT INTO t VALUES (1)", &[])
        .unwrap();
    let leader_reader = session(&mut cluster.leader, "r.db");
    let follower_reader = session(&mut cluster.followers[0], "r.db");
    for (engine, reader) in [
        (&mut cluster.leader, leader_reader),
        (&mut cluster.followers[0], follower_reader),
    ] {
        engine
            .exec(reader, "r.db", Target::Sql("BEGIN"), &[])
            .unwrap();
        assert_eq!(count(engine, reader, "r.db"), Value::Integer(1));
    }
    for value in 2..=5 {
        cluster
            .write(
                s,
                "r.db",
                "INSERT INTO t VALUES (?)",
                &[Value::Integer(value)],
            )
            .unwrap();
    }
    for (engine, reader) in [
        (&mut cluster.leader, leader_reader),
        (&mut cluster.followers[0], follower_reader),
    ] {
        assert_eq!(count(engine, reader, "r.db"), Value::Integer(1));
        engine
            .exec(reader, "r.db", Target::Sql("COMMIT"), &[])
            .unwrap();
        assert_eq!(count(engine, reader, "r.db"), Value::Integer(5));
    }
}

#[test]
fn test_returning_query_goes_through_the_write_path() {
    // `INSERT … RETURNING` sent as a query writes: it is proposed, and its rows are answered
    // once applied, on the leader and replicated to the follower (dqlite loses this write).
    let mut cluster = Cluster::new(1);
    let s = session(&mut cluster.leader, "q.db");
    cluster
        .write(s, "q.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, x)", &[])
        .unwrap();
    let reply = cluster
        .leader
        .query(
            s,
            "q.db",
            Target::Sql("INSERT INTO t(x) VALUES ('a'), ('b') RETURNING id, x"),
            &[],
        )
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    cluster.commit_all();
    let completion = cluster.leader.take_completions().pop().unwrap();
    let Ok(Response::Rows(rows)) = completion.result else {
        panic!("{:?}", completion.result)
    };
    assert_eq!(rows.columns, vec!["id", "x"]);
    assert_eq!(
        rows.values,
        vec![
            Value::Integer(1),
            Value::Text("a".into()),
            Value::Integer(2),
            Value::Text("b".into())
        ]
    );
    let f = session(&mut cluster.followers[0], "q.db");
    assert_eq!(
        count(&mut cluster.followers[0], f, "q.db"),
        Value::Integer(2)
    );
}

#[test]
fn test_transaction_over_the_frame_limit_fails_cleanly() {
    // With a 256 KiB limit, inserting a 1 MiB blob fails with a clear "too large" error; the
    // database is unchanged and still takes writes.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.transaction_bytes_max = 256 * 1024;
    let (mut engine, _) = Engine::open(config).unwrap();
    let s = session(&mut engine, "big.db");
    engine
        .exec(s, "big.db", Target::Sql("CREATE TABLE t(b)"), &[])
        .unwrap();
    let mut index = 0;
    let mut commit = |engine: &mut Engine| {
        for proposal in engine.take_proposals() {
            index += 1;
            engine.apply(index, &proposal.command).unwrap();
        }
        engine.take_completions()
    };
    commit(&mut engine);
    let result = engine.exec(
        s,
        "big.db",
        Target::Sql("INSERT INTO t VALUES (?)"),
        &[Value::Blob(vec![7; 1024 * 1024])],
    );
    let error = result.unwrap_err();
    assert!(
        matches!(error, ExecError::TransactionTooLarge { bytes_max: 262144 }),
        "{error}"
    );
    assert_eq!(error.code(), rusqlite::ffi::SQLITE_FULL);
    assert!(engine.take_proposals().is_empty());
    assert_eq!(count(&mut engine, s, "big.db"), Value::Integer(0));
    engine
        .exec(
            s,
            "big.db",
            Target::Sql("INSERT INTO t VALUES (zeroblob(1000))"),
            &[],
        )
        .unwrap();
    assert_eq!(commit(&mut engine).len(), 1);
    assert_eq!(count(&mut engine, s, "big.db"), Value::Integer(1));
    assert_eq!(engine.integrity_check("big.db").unwrap(), vec!["ok"]);
}

#[test]
fn test_interactive_transaction_reads_its_own_writes() {
    // BEGIN, several statements across requests (reading its own uncommitted rows), COMMIT:
    // others see nothing until the commit is applied; a rolled-back transaction leaves nothing.
    let mut cluster = Cluster::new(1);
    let s = session(&mut cluster.leader, "i.db");
    let other = session(&mut cluster.leader, "i.db");
    cluster.write(s, "i.db", "CREATE TABLE t(x)", &[]).unwrap();
    cluster.write(s, "i.db", "BEGIN", &[]).unwrap();
    cluster
        .write(s, "i.db", "INSERT INTO t VALUES (1)", &[])
        .unwrap();
    cluster
        .write(s, "i.db", "INSERT INTO t VALUES (2)", &[])
        .unwrap();
    assert_eq!(count(&mut cluster.leader, s, "i.db"), Value::Integer(2));
    assert_eq!(count(&mut cluster.leader, other, "i.db"), Value::Integer(0));
    cluster.write(s, "i.db", "COMMIT", &[]).unwrap();
    assert_eq!(count(&mut cluster.leader, other, "i.db"), Value::Integer(2));
    cluster.write(s, "i.db", "BEGIN IMMEDIATE", &[]).unwrap();
    cluster.write(s, "i.db", "DELETE FROM t", &[]).unwrap();
    cluster.write(s, "i.db", "ROLLBACK", &[]).unwrap();
    assert_eq!(count(&mut cluster.leader, other, "i.db"), Value::Integer(2));
    let f = session(&mut cluster.followers[0], "i.db");
    assert_eq!(
        count(&mut cluster.followers[0], f, "i.db"),
        Value::Integer(2)
    );
}

#[test]
fn test_prepared_statements_and_batched_rows() {
    // A prepared statement runs with typed parameters; a large result arrives in batches.
    let mut cluster = Cluster::new(0);
    let s = session(&mut cluster.leader, "p.db");
    cluster
        .write(
            s,
            "p.db",
            "CREATE TABLE t(i INTEGER, f REAL, s TEXT, b BLOB, n)",
            &[],
        )
        .unwrap();
    let (insert, parameters) = cluster
        .leader
        .prepare(s, "p.db", "INSERT INTO t VALUES (?, ?, ?, ?, ?)")
        .unwrap();
    assert_eq!(parameters, 5);
    for i in 0..300 {
        let params = [
            Value::Integer(i),
            Value::Float(i as f64 / 2.0),
            Value::Text(format!("text {i}")),
            Value::Blob(vec![i as u8; 500]),
            Value::Null,
        ];
        let reply = cluster
            .leader
            .exec(s, "p.db", Target::Statement(insert), &params)
            .unwrap();
        assert!(matches!(reply, Reply::Proposed { .. }));
        cluster.commit_all();
        assert!(cluster.leader.take_completions()[0].result.is_ok());
    }
    let (select, _) = cluster
        .leader
        .prepare(s, "p.db", "SELECT * FROM t ORDER BY i")
        .unwrap();
    let Reply::Done(Response::Rows(first)) = cluster
        .leader
        .query(s, "p.db", Target::Statement(select), &[])
        .unwrap()
    else {
        panic!("rows expected")
    };
    assert!(!first.done, "300 rows of 500 bytes exceed one 64 KiB batch");
    assert_eq!(first.declared_types[0].as_deref(), Some("INTEGER"));
    let mut total = first.row_count();
    loop {
        let next = cluster.leader.query_next(s).unwrap();
        total += next.row_count();
        if next.done {
            break;
        }
    }
    assert_eq!(total, 300);
    cluster.leader.finalize(s, select).unwrap();
    assert!(matches!(
        cluster
            .leader
            .query(s, "p.db", Target::Statement(select), &[]),
        Err(ExecError::UnknownStatement(_))
    ));
}

#[test]
fn test_stale_and_malformed_commands_are_rejected_everywhere() {
    // A command computed against an older state (its base is not the database's last command)
    // is rejected by every replica without writing; so is a malformed one.
    let mut cluster = Cluster::new(1);
    let s = session(&mut cluster.leader, "s.db");
    cluster.write(s, "s.db", "CREATE TABLE t(x)", &[]).unwrap();
    cluster
        .write(s, "s.db", "INSERT INTO t VALUES (1)", &[])
        .unwrap();
    // Replaying an old command at a new index: its base is no longer current.
    let old = cluster.log[1].clone();
    let index = cluster.log.len() as u64 + 1;
    let applied = cluster.followers[0].apply(index, &old).unwrap();
    assert!(matches!(applied, Applied::Stale { .. }), "{applied:?}");
    let applied = cluster.followers[0]
        .apply(index + 1, &old[..old.len() - 1])
        .unwrap();
    assert!(matches!(applied, Applied::Malformed(_)));
    let f = session(&mut cluster.followers[0], "s.db");
    assert_eq!(
        count(&mut cluster.followers[0], f, "s.db"),
        Value::Integer(1)
    );
}

#[test]
fn test_pragmas_that_break_replication_are_denied() {
    // Clients cannot leave WAL mode, checkpoint behind the engine's back, or attach files.
    let mut cluster = Cluster::new(0);
    let s = session(&mut cluster.leader, "g.db");
    for sql in [
        "PRAGMA journal_mode = DELETE",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA locking_mode = EXCLUSIVE",
        "ATTACH DATABASE '/tmp/x.db' AS x",
    ] {
        let error = cluster.write(s, "g.db", sql, &[]).unwrap_err();
        assert_eq!(
            error.code() & 0xff,
            rusqlite::ffi::SQLITE_AUTH,
            "{sql}: {error}"
        );
    }
    // Reading settings is fine.
    let rows = query_all(&mut cluster.leader, s, "g.db", "PRAGMA journal_mode");
    assert_eq!(rows.values, vec![Value::Text("wal".into())]);
}

#[test]
fn test_cache_size_is_sqlites_per_connection_and_the_heap_limit_is_not_a_clients() {
    // A session's connection starts at SQLite's default page cache (-2000: 2000 KiB) and the
    // client may change it, for its own connection only. The soft heap limit bounds all
    // connections of the process together: clients may read it, not change it.
    let mut cluster = Cluster::new(0);
    let a = session(&mut cluster.leader, "c.db");
    let b = session(&mut cluster.leader, "c.db");
    let read = |cluster: &mut Cluster, s, sql| query_all(&mut cluster.leader, s, "c.db", sql);
    assert_eq!(
        read(&mut cluster, a, "PRAGMA cache_size").values,
        vec![Value::Integer(-2000)]
    );
    cluster
        .write(a, "c.db", "PRAGMA cache_size = 100", &[])
        .unwrap();
    assert_eq!(
        read(&mut cluster, a, "PRAGMA cache_size").values,
        vec![Value::Integer(100)]
    );
    assert_eq!(
        read(&mut cluster, b, "PRAGMA cache_size").values,
        vec![Value::Integer(-2000)]
    );
    assert_eq!(
        read(&mut cluster, b, "PRAGMA soft_heap_limit").values,
        vec![Value::Integer(atoll_core::SQLITE_HEAP_SOFT_LIMIT_BYTES)]
    );
    for sql in [
        "PRAGMA soft_heap_limit = 0",
        "PRAGMA hard_heap_limit = 1000000",
    ] {
        let error = cluster.write(b, "c.db", sql, &[]).unwrap_err();
        assert_eq!(
            error.code() & 0xff,
            rusqlite::ffi::SQLITE_AUTH,
            "{sql}: {error}"
        );
    }
    assert_eq!(
        read(&mut cluster, b, "PRAGMA soft_heap_limit").values,
        vec![Value::Integer(atoll_core::SQLITE_HEAP_SOFT_LIMIT_BYTES)]
    );
}

#[test]
fn test_snapshot_install_replaces_databases() {
    // A snapshot taken on the leader while a reader holds an old transaction installs on a
    // fresh node; the node then applies later commands like any follower.
    let mut cluster = Cluster::new(0);
    let s = session(&mut cluster.leader, "a.db");
    cluster
        .write(s, "a.db", "CREATE TABLE t(x, b)", &[])
        .unwrap();
    for i in 0..50 {
        cluster
            .write(
                s,
                "a.db",
                "INSERT INTO t VALUES (?, randomblob(3000))",
                &[Value::Integer(i)],
            )
            .unwrap();
    }
    let b = session(&mut cluster.leader, "b.db");
    cluster.write(b, "b.db", "CREATE TABLE t(x)", &[]).unwrap();
    let mut snapshot = cluster.leader.snapshot().unwrap();
    let index = snapshot.index();
    let expected_len = snapshot.len_bytes();
    // A write applied after the snapshot started is not in it.
    cluster.write(s, "a.db", "DELETE FROM t", &[]).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut snapshot, &mut bytes).unwrap();
    drop(snapshot);
    assert_eq!(bytes.len() as u64, expected_len);

    let dir = tempfile::tempdir().unwrap();
    let (mut node, _) = Engine::open(config(dir.path(), 9)).unwrap();
    // A node with a database the snapshot lacks, and a corrupt stream first: nothing changes.
    let n = session(&mut node, "stale.db");
    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    assert!(node.install_snapshot(&mut corrupt.as_slice()).is_err());
    assert_eq!(node.database_names(), vec!["stale.db"]);
    assert_eq!(node.install_snapshot(&mut bytes.as_slice()).unwrap(), index);
    assert_eq!(node.database_names(), vec!["a.db", "b.db"]);
    assert!(matches!(
        node.exec(n, "a.db", Target::Sql("SELECT 1"), &[]),
        Err(ExecError::DatabaseNotOpen(_))
    ));
    let n = session(&mut node, "a.db");
    assert_eq!(count(&mut node, n, "a.db"), Value::Integer(50));
    // The DELETE was committed after the snapshot: apply it (and what follows) on the node.
    for (position, command) in cluster.log.iter().enumerate().skip(index as usize) {
        node.apply(position as u64 + 1, command).unwrap();
    }
    assert_eq!(count(&mut node, n, "a.db"), Value::Integer(0));
    assert_eq!(node.integrity_check("a.db").unwrap(), vec!["ok"]);
    node.checkpoint(true).unwrap();
    cluster.leader.checkpoint(true).unwrap();
    assert_eq!(
        std::fs::read(node.database_path("a.db").unwrap()).unwrap(),
        std::fs::read(cluster.leader.database_path("a.db").unwrap()).unwrap()
    );
}

#[test]
fn test_wal_stays_bounded_and_old_readers_survive_restarts() {
    // With a checkpoint every 64 frames, the apply path starts the WAL over once everything is
    // copied, so the WAL file stays near 64 frames. A reader that holds an old snapshot across
    // many checkpoints blocks the restart (it still reads its frames) and keeps its view.
    let mut cluster = Cluster::new(1);
    let s = session(&mut cluster.leader, "w.db");
    cluster
        .write(s, "w.db", "CREATE TABLE t(x, pad)", &[])
        .unwrap();
    let reader = session(&mut cluster.followers[0], "w.db");
    cluster
        .write(s, "w.db", "INSERT INTO t VALUES (0, randomblob(3000))", &[])
        .unwrap();
    cluster.followers[0]
        .exec(reader, "w.db", Target::Sql("BEGIN"), &[])
        .unwrap();
    assert_eq!(
        count(&mut cluster.followers[0], reader, "w.db"),
        Value::Integer(1)
    );
    for i in 1..300 {
        cluster
            .write(
                s,
                "w.db",
                "INSERT INTO t VALUES (?, randomblob(3000))",
                &[Value::Integer(i)],
            )
            .unwrap();
    }
    assert_eq!(
        count(&mut cluster.followers[0], reader, "w.db"),
        Value::Integer(1)
    );
    let rows = query_all(
        &mut cluster.followers[0],
        reader,
        "w.db",
        "SELECT sum(x) FROM t",
    );
    assert_eq!(rows.values, vec![Value::Integer(0)]);
    cluster.followers[0]
        .exec(reader, "w.db", Target::Sql("COMMIT"), &[])
        .unwrap();
    assert_eq!(
        count(&mut cluster.followers[0], reader, "w.db"),
        Value::Integer(300)
    );
    for i in 300..600 {
        cluster
            .write(
                s,
                "w.db",
                "INSERT INTO t VALUES (?, randomblob(3000))",
                &[Value::Integer(i)],
            )
            .unwrap();
    }
    let frame_bytes = 24 + 4096;
    for engine in [&cluster.leader, &cluster.followers[0]] {
        let path = engine.database_path("w.db").unwrap();
        let wal = std::fs::metadata(format!("{}-wal", path.display()))
            .unwrap()
            .len();
        // The follower's WAL grew while the reader pinned it; the leader's never passed the
        // policy by more than one transaction.
        if std::ptr::eq(engine, &cluster.leader) {
            assert!(wal <= 32 + 70 * frame_bytes, "leader WAL is {wal} bytes");
        }
        assert!(engine.checkpoint_index("w.db").unwrap() > 500);
        assert_eq!(engine.integrity_check("w.db").unwrap(), vec!["ok"]);
    }
    let follower_reader = session(&mut cluster.followers[0], "w.db");
    let rows = query_all(
        &mut cluster.followers[0],
        follower_reader,
        "w.db",
        "SELECT count(*), sum(x) FROM t",
    );
    assert_eq!(
        rows.values,
        vec![Value::Integer(600), Value::Integer(599 * 600 / 2)]
    );
}

#[test]
fn test_leadership_loss_abandons_local_writes() {
    // The leader steps down with a transaction open, a proposal out and a writer queued: the
    // transaction is rolled back (its session learns it at its next request), the proposal's
    // session and the queued one get errors. The proposal, committed by Raft anyway, still
    // applies like any replicated command.
    let mut cluster = Cluster::new(1);
    let admin = session(&mut cluster.leader, "l.db");
    cluster
        .write(admin, "l.db", "CREATE TABLE t(x)", &[])
        .unwrap();
    let proposer = session(&mut cluster.leader, "l.db");
    let queued = session(&mut cluster.leader, "l.db");
    let reply = cluster
        .leader
        .exec(
            proposer,
            "l.db",
            Target::Sql("INSERT INTO t VALUES (1)"),
            &[],
        )
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    let pending = cluster.leader.take_proposals();
    let reply = cluster
        .leader
        .exec(queued, "l.db", Target::Sql("INSERT INTO t VALUES (2)"), &[])
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    cluster.leader.abandon_writes("not the leader any more");
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 2);
    assert!(completions
        .iter()
        .all(|c| matches!(c.result, Err(ExecError::Discarded(_)))));
    // Raft commits the proposal after all: every replica applies it.
    for proposal in pending {
        cluster.log.push(proposal.command.clone());
        let index = cluster.log.len() as u64;
        cluster.leader.apply(index, &proposal.command).unwrap();
        cluster.followers[0]
            .apply(index, &proposal.command)
            .unwrap();
    }
    assert_eq!(count(&mut cluster.leader, admin, "l.db"), Value::Integer(1));
    // A transaction open when a replicated write arrives is rolled back and reported.
    let holder = session(&mut cluster.followers[0], "l.db");
    let follower = &mut cluster.followers[0];
    follower
        .exec(holder, "l.db", Target::Sql("BEGIN IMMEDIATE"), &[])
        .unwrap();
    follower
        .exec(
            holder,
            "l.db",
            Target::Sql("INSERT INTO t VALUES (99)"),
            &[],
        )
        .unwrap();
    let local = follower.take_proposals();
    assert!(
        local.is_empty(),
        "nothing proposed while the transaction is open"
    );
    cluster
        .write(admin, "l.db", "INSERT INTO t VALUES (3)", &[])
        .unwrap();
    let follower = &mut cluster.followers[0];
    assert!(matches!(
        follower.exec(holder, "l.db", Target::Sql("COMMIT"), &[]),
        Err(ExecError::Aborted(_))
    ));
    let rows = query_all(follower, holder, "l.db", "SELECT x FROM t ORDER BY x");
    assert_eq!(rows.values, vec![Value::Integer(1), Value::Integer(3)]);
    assert_eq!(follower.integrity_check("l.db").unwrap(), vec!["ok"]);
}

#[test]
fn test_multi_statement_writes_run_statement_by_statement_in_a_group() {
    // Several autocommit writes queue behind a proposal; one is a multi-statement text whose
    // second statement fails: as on a SQLite connection, its first statement stays and the
    // text stops at the error (answered with it); all commit in one command.
    let mut cluster = Cluster::new(0);
    let admin = session(&mut cluster.leader, "m.db");
    cluster
        .write(admin, "m.db", "CREATE TABLE t(x UNIQUE)", &[])
        .unwrap();
    let sessions: Vec<_> = (0..3)
        .map(|_| session(&mut cluster.leader, "m.db"))
        .collect();
    cluster
        .leader
        .exec(
            sessions[0],
            "m.db",
            Target::Sql("INSERT INTO t VALUES (1)"),
            &[],
        )
        .unwrap();
    let reply = cluster
        .leader
        .exec(
            sessions[1],
            "m.db",
            Target::Sql("INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)"),
            &[],
        )
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    cluster
        .leader
        .exec(
            sessions[2],
            "m.db",
            Target::Sql("INSERT INTO t VALUES (3); INSERT INTO t VALUES (4)"),
            &[],
        )
        .unwrap();
    cluster.commit_all();
    let completions = cluster.leader.take_completions();
    assert_eq!(completions.len(), 3);
    for completion in completions {
        assert_eq!(
            completion.result.is_err(),
            completion.session == sessions[1]
        );
    }
    let rows = query_all(
        &mut cluster.leader,
        admin,
        "m.db",
        "SELECT x FROM t ORDER BY x",
    );
    assert_eq!(
        rows.values,
        vec![1, 2, 3, 4]
            .into_iter()
            .map(Value::Integer)
            .collect::<Vec<_>>()
    );
}

#[test]
fn test_missing_parameters_are_null_and_extra_ones_refused() {
    // dqlite's binding rules: placeholders without a value read NULL (also for a prepared
    // statement executed again with fewer values), more values than placeholders is an error.
    let mut cluster = Cluster::new(0);
    let s = session(&mut cluster.leader, "params.db");
    let reply = cluster
        .leader
        .query(
            s,
            "params.db",
            Target::Sql("SELECT ?, ?"),
            &[Value::Integer(1)],
        )
        .unwrap();
    let Reply::Done(Response::Rows(rows)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(rows.values, vec![Value::Integer(1), Value::Null]);
    let (statement, count) = cluster
        .leader
        .prepare(s, "params.db", "SELECT ?, ?")
        .unwrap();
    assert_eq!(count, 2);
    let all = [Value::Integer(1), Value::Integer(2)];
    let reply = cluster
        .leader
        .query(s, "params.db", Target::Statement(statement), &all)
        .unwrap();
    let Reply::Done(Response::Rows(rows)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(rows.values, all.to_vec());
    let reply = cluster
        .leader
        .query(s, "params.db", Target::Statement(statement), &[])
        .unwrap();
    let Reply::Done(Response::Rows(rows)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        rows.values,
        vec![Value::Null, Value::Null],
        "no stale bindings"
    );
    let error = cluster
        .leader
        .query(
            s,
            "params.db",
            Target::Sql("SELECT ?"),
            &[Value::Integer(1), Value::Integer(2)],
        )
        .unwrap_err();
    assert_eq!(error.code(), 25, "{error}");
}

#[test]
fn test_repeated_chains_of_the_same_sessions_stay_consistent() {
    // Eight sessions write the same page in every round; each round runs as a chain (one
    // command, the page sent once). The hash entries of the chain's repeated page must all be
    // removed when it is hidden: a later round on the same connections then writes cleanly,
    // and followers end up with the same rows.
    let mut cluster = Cluster::new(1);
    let admin = session(&mut cluster.leader, "r.db");
    cluster
        .write(
            admin,
            "r.db",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, who)",
            &[],
        )
        .unwrap();
    let sessions: Vec<_> = (0..8)
        .map(|_| session(&mut cluster.leader, "r.db"))
        .collect();
    for _ in 0..5 {
        for (who, &s) in sessions.iter().enumerate() {
            cluster
                .leader
                .exec(
                    s,
                    "r.db",
                    Target::Sql("INSERT INTO t (who) VALUES (?)"),
                    &[Value::Integer(who as i64)],
                )
                .unwrap();
        }
        cluster.commit_all();
        let completions = cluster.leader.take_completions();
        assert_eq!(completions.len(), 8);
        assert!(
            completions.iter().all(|c| c.result.is_ok()),
            "{completions:?}"
        );
    }
    let count = |engine: &mut atoll_core::Engine, s| {
        query_all(engine, s, "r.db", "SELECT count(*), sum(who) FROM t").values
    };
    assert_eq!(
        count(&mut cluster.leader, admin),
        vec![Value::Integer(40), Value::Integer(5 * 28)]
    );
    let reader = session(&mut cluster.followers[0], "r.db");
    assert_eq!(
        count(&mut cluster.followers[0], reader),
        vec![Value::Integer(40), Value::Integer(5 * 28)]
    );
    assert_eq!(cluster.leader.integrity_check("r.db").unwrap(), vec!["ok"]);
    assert_eq!(
        cluster.followers[0].integrity_check("r.db").unwrap(),
        vec!["ok"]
    );
}

#[test]
fn test_each_session_writes_with_its_own_connection_state() {
    // Grouped autocommit writes of two sessions: each sees its own TEMP table, its own
    // PRAGMA foreign_keys and its own last_insert_rowid()/changes(), as on private SQLite
    // connections; RESULT after DDL keeps the connection's counters.
    let mut cluster = Cluster::new(0);
    let a = session(&mut cluster.leader, "s.db");
    let b = session(&mut cluster.leader, "s.db");
    cluster
        .write(
            a,
            "s.db",
            "CREATE TABLE p (id INTEGER PRIMARY KEY); \
             CREATE TABLE c (id INTEGER PRIMARY KEY, p REFERENCES p(id))",
            &[],
        )
        .unwrap();
    for s in [a, b] {
        cluster
            .write(s, "s.db", "PRAGMA foreign_keys = ON", &[])
            .unwrap();
    }
    cluster
        .write(b, "s.db", "PRAGMA foreign_keys = OFF", &[])
        .unwrap();
    cluster
        .write(a, "s.db", "CREATE TEMP TABLE tt (v)", &[])
        .unwrap();
    // Both queue behind a proposal, then run as one chain.
    let other = session(&mut cluster.leader, "s.db");
    let reply = cluster
        .leader
        .exec(other, "s.db", Target::Sql("INSERT INTO p VALUES (1)"), &[])
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    let reply = cluster
        .leader
        .exec(
            a,
            "s.db",
            Target::Sql("INSERT INTO tt VALUES (1), (2)"),
            &[],
        )
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    let reply = cluster
        .leader
        .exec(b, "s.db", Target::Sql("INSERT INTO c (p) VALUES (42)"), &[])
        .unwrap();
    assert_eq!(reply, Reply::Queued);
    cluster.commit_all();
    let completions = cluster.leader.take_completions();
    assert!(
        completions.iter().all(|c| c.result.is_ok()),
        "{completions:?}"
    );
    let rows = query_all(&mut cluster.leader, a, "s.db", "SELECT count(*) FROM tt");
    assert_eq!(rows.values, vec![Value::Integer(2)]);
    assert!(cluster
        .leader
        .query(b, "s.db", Target::Sql("SELECT * FROM tt"), &[])
        .is_err());
    let counters = |engine: &mut atoll_core::Engine, s| {
        query_all(engine, s, "s.db", "SELECT last_insert_rowid(), changes()").values
    };
    assert_eq!(
        counters(&mut cluster.leader, a),
        vec![Value::Integer(2), Value::Integer(2)]
    );
    assert_eq!(
        counters(&mut cluster.leader, b),
        vec![Value::Integer(1), Value::Integer(1)]
    );
    // B's foreign keys are off: its orphan row went in. A's are on.
    let error = cluster
        .write(a, "s.db", "INSERT INTO c (p) VALUES (43)", &[])
        .unwrap_err();
    assert_eq!(error.code(), 787, "{error}");
    let response = cluster
        .write(b, "s.db", "CREATE INDEX ci ON c (p)", &[])
        .unwrap();
    assert_eq!(
        response,
        Response::Exec {
            last_insert_id: 1,
            rows_changed: 1
        }
    );
}

#[test]
fn test_text_that_commits_then_opens_a_transaction() {
    // "INSERT; BEGIN; INSERT" in one request: the first insert commits in the chain; the
    // transaction opened after it cannot stay open on top of unpublished frames, so it is rolled
    // back with an error, and what committed stays (on every replica). "BEGIN; ...; COMMIT"
    // in one request, and a transaction over several requests, work as usual.
    let mut cluster = Cluster::new(1);
    let a = session(&mut cluster.leader, "o.db");
    let b = session(&mut cluster.leader, "o.db");
    cluster.write(a, "o.db", "CREATE TABLE t (v)", &[]).unwrap();
    let count =
        |engine: &mut Engine, s| query_all(engine, s, "o.db", "SELECT count(*) FROM t").values;
    let error = cluster
        .write(
            a,
            "o.db",
            "INSERT INTO t VALUES (1); BEGIN; INSERT INTO t VALUES (2)",
            &[],
        )
        .unwrap_err();
    assert!(matches!(error, ExecError::Aborted(_)), "{error}");
    assert_eq!(count(&mut cluster.leader, b), vec![Value::Integer(1)]);
    assert_eq!(count(&mut cluster.leader, a), vec![Value::Integer(1)]);
    let error = cluster
        .write(
            a,
            "o.db",
            "BEGIN; INSERT INTO t VALUES (3); COMMIT; BEGIN",
            &[],
        )
        .unwrap_err();
    assert!(matches!(error, ExecError::Aborted(_)), "{error}");
    assert_eq!(count(&mut cluster.leader, b), vec![Value::Integer(2)]);
    cluster
        .write(a, "o.db", "BEGIN; INSERT INTO t VALUES (4)", &[])
        .unwrap();
    assert_eq!(count(&mut cluster.leader, b), vec![Value::Integer(2)]);
    cluster
        .write(a, "o.db", "INSERT INTO t VALUES (5); COMMIT", &[])
        .unwrap();
    assert_eq!(count(&mut cluster.leader, b), vec![Value::Integer(4)]);
    let reader = session(&mut cluster.followers[0], "o.db");
    assert_eq!(
        count(&mut cluster.followers[0], reader),
        vec![Value::Integer(4)]
    );
    assert_eq!(cluster.leader.integrity_check("o.db").unwrap(), vec!["ok"]);
    assert_eq!(
        cluster.followers[0].integrity_check("o.db").unwrap(),
        vec!["ok"]
    );
}

#[test]
fn test_restore_database_replaces_one_database_and_keeps_the_others() {
    // A restore replaces one database with a SQLite file at a given index; the others keep
    // their content; a session must open the database again; a source shorter than it claims
    // changes nothing; later commands apply on top of the restored database.
    let mut cluster = Cluster::new(0);
    let a = session(&mut cluster.leader, "a.db");
    cluster.write(a, "a.db", "CREATE TABLE t(x)", &[]).unwrap();
    cluster
        .write(a, "a.db", "INSERT INTO t VALUES (1)", &[])
        .unwrap();
    let b = session(&mut cluster.leader, "b.db");
    cluster.write(b, "b.db", "CREATE TABLE u(y)", &[]).unwrap();
    cluster
        .write(b, "b.db", "INSERT INTO u VALUES (7)", &[])
        .unwrap();

    // The file to restore: written by plain SQLite, in WAL mode (as `atoll restore` sends it).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.db");
    {
        let connection = rusqlite::Connection::open(&file).unwrap();
        connection
            .execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t(x); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
                 INSERT INTO t SELECT i FROM n; PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
    }
    let bytes = std::fs::read(&file).unwrap();
    let pages = (bytes.len() / 4096) as u32;
    let applied = cluster.leader.applied_index();

    let short = &bytes[..bytes.len() - 4096];
    assert!(cluster
        .leader
        .restore_database(
            "a.db",
            Box::new(std::io::Cursor::new(short.to_vec())),
            4096,
            pages,
            applied + 1
        )
        .is_err());
    assert_eq!(count(&mut cluster.leader, a, "a.db"), Value::Integer(1));
    assert_eq!(cluster.leader.applied_index(), applied);

    cluster
        .leader
        .restore_database(
            "a.db",
            Box::new(std::io::Cursor::new(bytes.clone())),
            4096,
            pages,
            applied + 1,
        )
        .unwrap();
    assert_eq!(cluster.leader.applied_index(), applied + 1);
    assert!(matches!(
        cluster.leader.exec(a, "a.db", Target::Sql("SELECT 1"), &[]),
        Err(ExecError::DatabaseNotOpen(_))
    ));
    let a = session(&mut cluster.leader, "a.db");
    assert_eq!(count(&mut cluster.leader, a, "a.db"), Value::Integer(500));
    let b = session(&mut cluster.leader, "b.db");
    let rows = query_all(&mut cluster.leader, b, "b.db", "SELECT y FROM u");
    assert_eq!(rows.values, vec![Value::Integer(7)]);
    assert_eq!(cluster.leader.integrity_check("a.db").unwrap(), vec!["ok"]);
    // Later writes go on top of the restored database.
    cluster.log.push(Vec::new()); // The restore's slot in the test log (index applied + 1).
    cluster
        .write(a, "a.db", "DELETE FROM t WHERE x > 10", &[])
        .unwrap();
    assert_eq!(count(&mut cluster.leader, a, "a.db"), Value::Integer(10));
}

//! Basic replication: a leader and two followers; writes are hidden until applied, then every
//! replica answers identically.

mod common;

use atoll_core::{Reply, Response, Target, Value};
use common::*;

#[test]
fn test_write_hidden_until_apply_then_visible_everywhere() {
    // A write is proposed but not applied: no reader on the leader sees it, not even a new
    // session; after apply, all three replicas see the same rows.
    let mut cluster = Cluster::new(2);
    let writer = session(&mut cluster.leader, "main.db");
    cluster
        .write(
            writer,
            "main.db",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
            &[],
        )
        .unwrap();
    let reply = cluster
        .leader
        .exec(
            writer,
            "main.db",
            Target::Sql("INSERT INTO t(v) VALUES (?)"),
            &[Value::Text("hello".into())],
        )
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    let reader = session(&mut cluster.leader, "main.db");
    let rows = query_all(
        &mut cluster.leader,
        reader,
        "main.db",
        "SELECT count(*) FROM t",
    );
    assert_eq!(rows.values, vec![Value::Integer(0)]);
    cluster.commit_all();
    let done = cluster.leader.take_completions();
    assert_eq!(done.len(), 1);
    assert!(matches!(
        done[0].result,
        Ok(Response::Exec {
            last_insert_id: 1,
            rows_changed: 1
        })
    ));
    for engine in std::iter::once(&mut cluster.leader).chain(cluster.followers.iter_mut()) {
        let s = session(engine, "main.db");
        let rows = query_all(engine, s, "main.db", "SELECT id, v FROM t");
        assert_eq!(
            rows.values,
            vec![Value::Integer(1), Value::Text("hello".into())]
        );
        assert_eq!(
            engine.integrity_check("main.db").unwrap(),
            vec!["ok".to_string()]
        );
    }
}

#[test]
fn test_spilled_frames_of_a_large_transaction_stay_hidden() {
    // A transaction far larger than the page cache spills pages to the (captured) WAL before it
    // commits, and reads them back. Readers on other connections see none of it, before or
    // after the commit, until the command is applied; then every replica has all of it.
    let mut cluster = Cluster::new(1);
    let writer = session(&mut cluster.leader, "s.db");
    let reader = session(&mut cluster.leader, "s.db");
    cluster
        .write(
            writer,
            "s.db",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, b)",
            &[],
        )
        .unwrap();
    cluster
        .write(writer, "s.db", "INSERT INTO t VALUES (1, 'x')", &[])
        .unwrap();
    cluster.write(writer, "s.db", "BEGIN", &[]).unwrap();
    for _ in 0..40 {
        cluster
            .write(
                writer,
                "s.db",
                "INSERT INTO t(b) VALUES (randomblob(100000))",
                &[],
            )
            .unwrap();
        let rows = query_all(
            &mut cluster.leader,
            reader,
            "s.db",
            "SELECT count(*) FROM t",
        );
        assert_eq!(rows.values, vec![Value::Integer(1)]);
    }
    cluster
        .write(writer, "s.db", "UPDATE t SET b = 'y' WHERE id = 1", &[])
        .unwrap();
    let reply = cluster
        .leader
        .exec(writer, "s.db", Target::Sql("COMMIT"), &[])
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    let rows = query_all(
        &mut cluster.leader,
        reader,
        "s.db",
        "SELECT count(*), b FROM t",
    );
    assert_eq!(
        rows.values,
        vec![Value::Integer(1), Value::Text("x".into())]
    );
    assert_eq!(cluster.leader.integrity_check("s.db").unwrap(), vec!["ok"]);
    cluster.commit_all();
    assert!(cluster.leader.take_completions()[0].result.is_ok());
    for engine in std::iter::once(&mut cluster.leader).chain(cluster.followers.iter_mut()) {
        let s = session(engine, "s.db");
        let rows = query_all(
            engine,
            s,
            "s.db",
            "SELECT count(*), sum(length(b)) FROM t WHERE id > 1",
        );
        assert_eq!(
            rows.values,
            vec![Value::Integer(40), Value::Integer(4_000_000)]
        );
        // Sorting 4 MB with a 256 KiB cache spills to temp files (served by the default VFS).
        let rows = query_all(
            engine,
            s,
            "s.db",
            "SELECT length(b) FROM t WHERE id > 1 ORDER BY b, randomblob(8) LIMIT 3",
        );
        assert_eq!(rows.values, vec![Value::Integer(100_000); 3]);
        assert_eq!(engine.integrity_check("s.db").unwrap(), vec!["ok"]);
    }
}

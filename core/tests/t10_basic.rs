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

#[test]
fn test_database_image_is_a_consistent_file_of_committed_state() {
    // A database with committed frames still in its WAL (no checkpoint yet) and a proposed,
    // uncommitted write: the image applies every committed frame, leaves the proposed one out,
    // and SQLite opens it as a plain file with the committed rows. An unknown name has no image.
    let mut cluster = Cluster::new(0);
    let writer = session(&mut cluster.leader, "img.db");
    cluster
        .write(writer, "img.db", "CREATE TABLE t(x INTEGER, b BLOB)", &[])
        .unwrap();
    for i in 0..50 {
        cluster
            .write(
                writer,
                "img.db",
                "INSERT INTO t VALUES (?, randomblob(3000))",
                &[Value::Integer(i)],
            )
            .unwrap();
    }
    let reply = cluster
        .leader
        .exec(
            writer,
            "img.db",
            Target::Sql("INSERT INTO t VALUES (999, NULL)"),
            &[],
        )
        .unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    assert!(cluster
        .leader
        .database_image("nosuch.db")
        .unwrap()
        .is_none());
    let mut image = cluster.leader.database_image("img.db").unwrap().unwrap();
    let expected_len = image.len_bytes();
    assert_eq!(expected_len, u64::from(image.page_count()) * 4096);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut image, &mut bytes).unwrap();
    drop(image);
    assert_eq!(bytes.len() as u64, expected_len);
    assert!(bytes.len() > 40 * 4096, "50 rows of 3000 bytes");
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    let page_count = u32::from_be_bytes(bytes[28..32].try_into().unwrap());
    assert_eq!(u64::from(page_count) * 4096, expected_len);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.db");
    std::fs::write(&path, &bytes).unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (count, sum): (i64, i64) = db
        .query_row("SELECT count(*), sum(x) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (count, sum),
        (50, 49 * 50 / 2),
        "the proposed row is not in the image"
    );
}

/// Commits one 1500-byte row into `t(v BLOB)` (about one WAL frame).
fn insert_blob(cluster: &mut Cluster, writer: atoll_core::SessionId, i: u32) {
    cluster
        .write(
            writer,
            "main.db",
            "INSERT INTO t(v) VALUES (?)",
            &[Value::Blob(vec![i as u8; 1500])],
        )
        .unwrap();
}

/// The indices at which each engine's checkpoint index moved, over 400 single-row writes; each
/// engine's jitter seed is its node id plus `seed`.
fn checkpoint_points(jitter: u32, seed: u64) -> Vec<Vec<u64>> {
    let mut cluster = Cluster::with_config(2, |config| {
        config.checkpoint_frames = 64;
        config.checkpoint_jitter_frames = jitter;
        config.checkpoint_jitter_seed = config.node_id.wrapping_add(seed);
    });
    let writer = session(&mut cluster.leader, "main.db");
    cluster
        .write(writer, "main.db", "CREATE TABLE t(v BLOB)", &[])
        .unwrap();
    let mut points = vec![Vec::new(); 3];
    let mut last = [0u64; 3];
    for i in 0..400u32 {
        insert_blob(&mut cluster, writer, i);
        let engines = std::iter::once(&cluster.leader).chain(&cluster.followers);
        for (n, engine) in engines.enumerate() {
            let index = engine.checkpoint_index("main.db").unwrap();
            if index != last[n] {
                points[n].push(index);
                last[n] = index;
            }
        }
    }
    points
}

#[test]
fn test_checkpoint_jitter_keeps_replicas_from_checkpointing_together() {
    // Without jitter every replica checkpoints at the same entries (they apply the same
    // frames), so in a cluster all loops would stall at once; with it they drift apart.
    let together = checkpoint_points(0, 0);
    assert!(together[0].len() >= 5, "{together:?}");
    assert!(together.iter().all(|p| *p == together[0]), "{together:?}");
    let apart = checkpoint_points(64, 0);
    for points in &apart {
        // Between 64 and 128 frames per checkpoint: fewer checkpoints, but still regular.
        assert!(points.len() >= 3, "{apart:?}");
        assert!(
            points.len() <= together[0].len(),
            "{apart:?} vs {together:?}"
        );
    }
    assert!(
        apart.iter().any(|p| *p != apart[0]),
        "jitter left every replica checkpointing at the same entries: {apart:?}"
    );
}

#[test]
fn test_checkpoint_jitter_replays_from_its_seed() {
    // The engine draws no randomness of its own: one seed, the same checkpoints (a simulator's
    // run replays identically); another seed, other checkpoints.
    let first = checkpoint_points(64, 1000);
    assert_eq!(first, checkpoint_points(64, 1000));
    let other = (1001..1004).map(|seed| checkpoint_points(64, seed));
    assert!(
        other.into_iter().any(|points| points != first),
        "the seed does not steer the jitter: {first:?}"
    );
}

#[test]
fn test_checkpoint_sync_in_background_advances_the_index_and_forced_checkpoints_wait() {
    // With the durable half of checkpoints on the helper thread, `apply` returns after the
    // copy; the checkpoint index moves once `poll_checkpoints` takes the answer, and a forced
    // checkpoint (the host's before a snapshot or when idle) waits for it, then is current.
    let mut cluster = Cluster::with_config(1, |config| {
        config.checkpoint_frames = 64;
        config.checkpoint_sync_in_background = true;
    });
    let writer = session(&mut cluster.leader, "main.db");
    cluster
        .write(writer, "main.db", "CREATE TABLE t(v BLOB)", &[])
        .unwrap();
    let mut moves = 0;
    let mut last = cluster.leader.checkpoint_index("main.db").unwrap();
    for i in 0..300u32 {
        insert_blob(&mut cluster, writer, i);
        cluster.leader.poll_checkpoints();
        let index = cluster.leader.checkpoint_index("main.db").unwrap();
        assert!(index >= last, "the checkpoint index went back");
        if index > last {
            moves += 1;
            last = index;
        }
    }
    assert!(
        moves >= 3,
        "the background checkpoints never completed ({moves})"
    );
    let applied = cluster.leader.applied_index();
    assert_eq!(cluster.leader.checkpoint(true).unwrap(), Some(applied));
    assert_eq!(cluster.leader.checkpoint_index("main.db"), Some(applied));
    // Reopened, the engine recovers from those records: every row is there.
    let dir = cluster.dirs[0].path().to_path_buf();
    let Cluster { leader, .. } = cluster;
    drop(leader);
    let (mut engine, recovery) = atoll_core::Engine::open(config(&dir, 1)).unwrap();
    assert_eq!(recovery.replay_from(), Some(applied));
    let reader = session(&mut engine, "main.db");
    let rows = query_all(&mut engine, reader, "main.db", "SELECT count(*) FROM t");
    assert_eq!(rows.values, vec![Value::Integer(300)]);
}

//! Day-2 operations against real nodes: `atoll backup` (from the leader and from a follower)
//! and `atoll recover` after the loss of a majority.

use std::process::Command;

use crate::support::{atoll, require, run_command, shell, AtollCluster};

/// `sqlite3 FILE .dump`: the whole content as SQL text.
fn sqlite_dump(path: &std::path::Path) -> String {
    let mut command = Command::new("sqlite3");
    command.arg(path).arg(".dump");
    run_command(command, None).ok().to_owned()
}

/// A backup from the leader and one from a follower (`--from-follower`) of a database of a few
/// MiB (many DUMP pieces) are valid SQLite files with the same content, which is the content
/// written; a missing database and a missing follower are clear errors that write nothing.
#[test]
fn test_backup_from_leader_and_follower_hold_the_written_content() {
    require("sqlite3");
    let cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    shell(
        &addresses,
        "app",
        &["CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB, t TEXT)"],
    )
    .ok();
    for round in 0..8 {
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
             INSERT INTO kv (v, t) SELECT randomblob(2000), 'r{round}-' || i FROM n"
        );
        shell(&addresses, "app", &[&sql]).ok();
    }
    shell(&addresses, "app", &["DELETE FROM kv WHERE k % 7 = 0"]).ok();
    cluster.wait_in_sync();

    let dir = tempfile::tempdir().unwrap();
    let from_leader = dir.path().join("leader.db");
    let from_follower = dir.path().join("follower.db");
    let out = atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "app",
        "-o",
        from_leader.to_str().unwrap(),
    ]);
    assert!(out.ok().contains("from the leader"), "{}", out.stdout);
    let out = atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "app",
        "-o",
        from_follower.to_str().unwrap(),
        "--from-follower",
    ]);
    assert!(out.ok().contains("from follower"), "{}", out.stdout);
    let leader_id = cluster.nodes[cluster.leader()].id();
    assert!(
        !out.stdout.contains(&format!("follower {leader_id} ")),
        "{}",
        out.stdout
    );
    assert!(
        std::fs::metadata(&from_leader).unwrap().len() > 3 << 20,
        "a backup of several MiB"
    );

    let text = sqlite_dump(&from_leader);
    assert_eq!(text, sqlite_dump(&from_follower));
    let connection = rusqlite::Connection::open(&from_leader).unwrap();
    let (count, check): (i64, String) = connection
        .query_row(
            "SELECT count(*), (SELECT quick_check FROM pragma_quick_check) FROM kv",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(count, 1600 - 1600 / 7);
    assert_eq!(check, "ok");

    let missing = dir.path().join("missing.db");
    let err = atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "nosuchdb",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert!(err.failed().contains("no"), "{}", err.stderr);
    assert!(!missing.exists());
}

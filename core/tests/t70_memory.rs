//! Memory: the database lives on disk. Writing and reading 64 MiB through the engine grows the
//! process's resident memory by far less than the data (page caches under the soft heap limit,
//! no mmap, a bounded WAL, capture and apply buffers shrunk after large transactions). One test
//! in this file, so the process measures itself alone.

mod common;

use atoll_core::{Engine, Reply, SessionId, Target, Value};
use common::*;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Runs a write on `leader` and applies its command on both engines (no log is kept: the test
/// harness must not hold the data in memory either).
fn write(engines: &mut [Engine; 2], index: &mut u64, s: SessionId, sql: &str) {
    let reply = engines[0].exec(s, "big.db", Target::Sql(sql), &[]).unwrap();
    assert!(matches!(reply, Reply::Proposed { .. }));
    for proposal in engines[0].take_proposals() {
        *index += 1;
        for engine in engines.iter_mut() {
            engine.apply(*index, &proposal.command).unwrap();
        }
    }
    assert!(engines[0].take_completions()[0].result.is_ok());
}

#[test]
fn test_resident_memory_does_not_grow_with_the_database() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut engines = [
        Engine::open(config(dirs[0].path(), 1)).unwrap().0,
        Engine::open(config(dirs[1].path(), 2)).unwrap().0,
    ];
    let mut index = 0;
    let s = session(&mut engines[0], "big.db");
    write(&mut engines, &mut index, s, "CREATE TABLE t(b)");
    let insert = "INSERT INTO t VALUES (randomblob(262144))";
    // Warm up: buffers and caches reach their steady size.
    for _ in 0..8 {
        write(&mut engines, &mut index, s, insert);
    }
    let before = resident_kib();
    for _ in 0..256 {
        write(&mut engines, &mut index, s, insert);
    }
    for engine in engines.iter_mut() {
        let reader = session(engine, "big.db");
        let rows = query_all(engine, reader, "big.db", "SELECT sum(length(b)) FROM t");
        assert_eq!(rows.values, vec![Value::Integer(264 * 262144)]);
    }
    let after = resident_kib();
    let path = engines[1].database_path("big.db").unwrap();
    let size = std::fs::metadata(path).unwrap().len();
    let wal = std::fs::metadata(format!("{}-wal", path.display()))
        .unwrap()
        .len();
    eprintln!("resident {before} -> {after} KiB; main file {size}, WAL {wal} bytes");
    assert!(
        size + wal > 60 * 1024 * 1024,
        "the data is on disk: {size} + {wal} bytes"
    );
    let grown = after.saturating_sub(before);
    assert!(
        grown < 24 * 1024,
        "resident memory grew by {grown} KiB while writing 64 MiB (two replicas)"
    );
}

//! SQLite's memory, bounded for the whole process: 64 sessions each scanning a 6 MiB table
//! would fill 64 page caches of SQLite's default 2000 KiB (128 MiB); the soft heap limit keeps
//! them together near `SQLITE_HEAP_SOFT_LIMIT_BYTES`. `Engine::release_memory` then frees the
//! caches, and every session still answers. One test in this file, so the process's SQLite
//! memory is this test's alone.

mod common;

use atoll_core::{Engine, Reply, Target, Value, SQLITE_HEAP_SOFT_LIMIT_BYTES};
use common::*;

#[test]
fn test_page_caches_are_bounded_together_and_released_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::open(config(dir.path(), 1)).unwrap().0;
    let writer = session(&mut engine, "m.db");
    let mut index = 0;
    for sql in [
        "CREATE TABLE t(b)",
        "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 2000) \
         INSERT INTO t SELECT randomblob(3000) FROM n",
    ] {
        let reply = engine.exec(writer, "m.db", Target::Sql(sql), &[]).unwrap();
        assert!(matches!(reply, Reply::Proposed { .. }));
        for proposal in engine.take_proposals() {
            index += 1;
            engine.apply(index, &proposal.command).unwrap();
        }
        assert!(engine.take_completions()[0].result.is_ok());
    }
    let sessions: Vec<_> = (0..64).map(|_| session(&mut engine, "m.db")).collect();
    let scan = "SELECT count(*), sum(length(b)) FROM t";
    let want = vec![Value::Integer(2000), Value::Integer(2000 * 3000)];
    for &s in &sessions {
        assert_eq!(query_all(&mut engine, s, "m.db", scan).values, want);
    }
    let filled = Engine::sqlite_memory_bytes();
    eprintln!("SQLite memory after 64 scans: {filled} bytes");
    // Each connection's own memory (lookaside, schema, statements, pinned pages) comes on top
    // of the recycled caches: 64 of them fit in another 8 MiB.
    assert!(
        filled <= 2 * SQLITE_HEAP_SOFT_LIMIT_BYTES,
        "SQLite holds {filled} bytes for 64 sessions"
    );
    engine.release_memory();
    let released = Engine::sqlite_memory_bytes();
    eprintln!("SQLite memory after release_memory: {released} bytes");
    assert!(
        released <= filled / 2,
        "release_memory kept {released} of {filled} bytes"
    );
    for &s in &sessions {
        assert_eq!(query_all(&mut engine, s, "m.db", scan).values, want);
    }
}

//! Session semantics: scripts for two sessions run through a real node (the dqlite wire, one
//! client connection per session) and through two local rusqlite connections of the same
//! SQLite on one WAL file; every answer must be identical. Then many sessions write at once
//! (group commit) and each still sees only its own connection state.

use std::sync::{Arc, Barrier};
use std::thread;

use atoll_bench::cluster::SingleNode;
use atoll_bench::sqldiff::{Answer, Cell, Local, Remote, Step};
use atoll_net::protocol::Value;

fn exec(session: usize, sql: &str) -> Step {
    Step {
        session,
        query: false,
        sql: sql.to_owned(),
        params: Vec::new(),
    }
}

fn query(session: usize, sql: &str) -> Step {
    Step {
        session,
        query: true,
        ..exec(session, sql)
    }
}

fn with(mut step: Step, params: Vec<Value>) -> Step {
    step.params = params;
    step
}

/// Runs `steps` both ways on a fresh database; panics at the first difference. Returns
/// atoll's answers.
fn same_answers(node: &SingleNode, database: &str, steps: &[Step]) -> Vec<Answer> {
    let mut remote = Remote::open(&node.address(), database, 2).unwrap();
    let mut local = Local::open(2).unwrap();
    let mut answers = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let got = remote.run(step).unwrap();
        let expected = local.run(step);
        assert_eq!(got, expected, "{database} step {index}: {step:?}");
        answers.push(got);
    }
    answers
}

fn is_failure(answer: &Answer) -> bool {
    matches!(answer, Answer::Failure { .. })
}

#[test]
fn test_sessions_answer_as_private_sqlite_connections() {
    let node = SingleNode::start().unwrap();

    // TEMP tables, views and triggers: per session, through their whole life.
    let answers = same_answers(
        &node,
        "temp",
        &[
            exec(0, "CREATE TABLE main_t (v)"),
            exec(0, "CREATE TEMP TABLE tt (v)"),
            exec(0, "INSERT INTO tt VALUES (1), (2)"),
            query(0, "SELECT v FROM tt ORDER BY v"),
            query(1, "SELECT v FROM tt"),
            exec(1, "CREATE TEMP TABLE tt (w TEXT)"),
            exec(1, "INSERT INTO tt VALUES ('other')"),
            query(1, "SELECT * FROM tt"),
            query(0, "SELECT count(*) FROM tt"),
            exec(0, "CREATE TEMP VIEW tv AS SELECT v * 10 AS ten FROM tt"),
            query(0, "SELECT ten FROM tv ORDER BY ten"),
            exec(
                0,
                "CREATE TEMP TRIGGER trg AFTER INSERT ON main_t BEGIN \
                 INSERT INTO tt VALUES (new.v); END",
            ),
            exec(0, "INSERT INTO main_t VALUES (7)"),
            exec(1, "INSERT INTO main_t VALUES (8)"),
            query(0, "SELECT v FROM tt ORDER BY v"),
            query(1, "SELECT * FROM tt"),
            query(1, "SELECT v FROM main_t ORDER BY v"),
            exec(0, "DROP TABLE tt"),
            query(0, "SELECT * FROM tt"),
        ],
    );
    assert!(is_failure(&answers[4]), "the other session has no tt");
    assert!(is_failure(&answers[18]), "dropped");

    // Per-connection PRAGMAs reach the session's writes.
    let answers = same_answers(
        &node,
        "pragmas",
        &[
            exec(
                0,
                "CREATE TABLE p (id INTEGER PRIMARY KEY); \
                 CREATE TABLE c (id INTEGER PRIMARY KEY, p REFERENCES p(id))",
            ),
            exec(0, "PRAGMA foreign_keys = ON"),
            exec(1, "PRAGMA foreign_keys = OFF"),
            exec(0, "INSERT INTO c (p) VALUES (99)"),
            exec(1, "INSERT INTO c (p) VALUES (99)"),
            query(0, "PRAGMA foreign_keys"),
            query(1, "PRAGMA foreign_keys"),
            exec(0, "PRAGMA case_sensitive_like = 1"),
            exec(0, "INSERT INTO p VALUES (1)"),
            query(0, "SELECT 'ABC' LIKE 'abc'"),
            query(1, "SELECT 'ABC' LIKE 'abc'"),
            query(0, "SELECT count(*) FROM c"),
        ],
    );
    assert!(is_failure(&answers[3]), "foreign keys are on for session 0");
    assert!(!is_failure(&answers[4]), "and off for session 1");

    // The counter functions and RESULT counters are the connection's, with no leak.
    let answers = same_answers(
        &node,
        "counters",
        &[
            exec(0, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"),
            exec(0, "INSERT INTO t (v) VALUES (1), (2), (3)"),
            exec(1, "INSERT INTO t (v) VALUES (4)"),
            query(0, "SELECT last_insert_rowid(), changes(), total_changes()"),
            query(1, "SELECT last_insert_rowid(), changes(), total_changes()"),
            exec(0, "CREATE INDEX tv ON t (v)"),
            exec(0, "DELETE FROM t WHERE v = 100"),
            exec(1, "UPDATE t SET v = v + 1 WHERE v < 3"),
            query(0, "SELECT last_insert_rowid(), changes(), total_changes()"),
            query(1, "SELECT last_insert_rowid(), changes(), total_changes()"),
            with(
                exec(1, "INSERT INTO t (v) VALUES (?)"),
                vec![Value::Integer(9)],
            ),
            exec(1, "SELECT 1"),
            exec(1, "-- nothing"),
        ],
    );
    assert_eq!(
        answers[5],
        Answer::Result {
            last_insert_id: 3,
            rows_affected: 3
        },
        "RESULT after DDL keeps the connection's counters"
    );

    // Migration scripts: transaction control inside one EXEC_SQL text; savepoints; a failing
    // text keeps what ran before the error; a transaction over several requests.
    let answers = same_answers(
        &node,
        "migrations",
        &[
            exec(
                0,
                "BEGIN; CREATE TABLE m (x UNIQUE); INSERT INTO m VALUES (1); \
                 INSERT INTO m VALUES (2); COMMIT",
            ),
            query(1, "SELECT x FROM m ORDER BY x"),
            exec(
                0,
                "SAVEPOINT a; INSERT INTO m VALUES (3); SAVEPOINT b; INSERT INTO m VALUES (4); \
                 ROLLBACK TO b; RELEASE a",
            ),
            exec(
                1,
                "INSERT INTO m VALUES (10); INSERT INTO nosuch VALUES (1); \
                 INSERT INTO m VALUES (11)",
            ),
            exec(
                1,
                "INSERT INTO m VALUES (12); INSERT INTO m VALUES (1); INSERT INTO m VALUES (13)",
            ),
            query(0, "SELECT x FROM m ORDER BY x"),
            exec(0, "BEGIN"),
            exec(0, "INSERT INTO m VALUES (20)"),
            query(0, "SELECT count(*) FROM m"),
            query(1, "SELECT count(*) FROM m"),
            exec(0, "ROLLBACK"),
            exec(0, "BEGIN; INSERT INTO m VALUES (21)"),
            exec(0, "INSERT INTO m VALUES (22); COMMIT"),
            query(1, "SELECT x FROM m ORDER BY x"),
        ],
    );
    assert!(is_failure(&answers[3]) && is_failure(&answers[4]));

    // Busy: a writer behind the other session's explicit transaction gets "database is
    // locked" (atoll after a bounded wait, SQLite at once), then writes once it ends.
    let answers = same_answers(
        &node,
        "busy",
        &[
            exec(0, "CREATE TABLE b (v)"),
            exec(0, "BEGIN IMMEDIATE"),
            exec(0, "INSERT INTO b VALUES (1)"),
            exec(1, "INSERT INTO b VALUES (2)"),
            exec(0, "COMMIT"),
            exec(1, "INSERT INTO b VALUES (2)"),
            query(1, "SELECT v FROM b ORDER BY v"),
            // A transaction that has not written the database blocks no writer.
            exec(
                0,
                "BEGIN; CREATE TEMP TABLE x (v); INSERT INTO x VALUES (1)",
            ),
            exec(1, "INSERT INTO b VALUES (3)"),
            query(0, "SELECT count(*) FROM b"),
            exec(0, "INSERT INTO b VALUES (4)"),
            exec(0, "COMMIT"),
            query(1, "SELECT v FROM b ORDER BY v"),
        ],
    );
    assert_eq!(
        answers[3],
        Answer::Failure {
            code: 5,
            message: "database is locked".into()
        }
    );

    // Wide rows and large cells stream whole.
    let params: Vec<Value> = (0..1000).map(Value::Integer).collect();
    let placeholders = vec!["?"; 1000].join(", ");
    same_answers(
        &node,
        "wide",
        &[
            with(query(0, &format!("SELECT {placeholders}")), params),
            exec(0, "CREATE TABLE w (v)"),
            exec(
                0,
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 10) \
                 INSERT INTO w SELECT randomblob(8192) FROM c",
            ),
            query(
                1,
                "SELECT length(v), hex(substr(v, 1, 4)) = hex(substr(v, 1, 4)) FROM w",
            ),
            with(
                exec(1, "INSERT INTO w VALUES (?)"),
                vec![Value::Blob(vec![7; 8 << 20])],
            ),
            query(0, "SELECT v FROM w WHERE length(v) > 8192"),
            query(0, "SELECT zeroblob(8192), zeroblob(8192)"),
        ],
    );
}

/// Sixteen sessions write at once, so their requests run in chains; each checks after every
/// write that `last_insert_rowid()`, `changes()` and its TEMP table are its own.
#[test]
fn test_concurrent_sessions_keep_their_own_state() {
    const SESSIONS: usize = 16;
    const ROWS: usize = 20;
    let node = SingleNode::start().unwrap();
    let address = node.address();
    let mut setup = Remote::open(&address, "many", 1).unwrap();
    setup
        .run(&exec(0, "CREATE TABLE t (id INTEGER PRIMARY KEY, who)"))
        .unwrap();
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|who| {
            let address = address.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut remote = Remote::open(&address, "many", 1).unwrap();
                remote.run(&exec(0, "CREATE TEMP TABLE mine (id)")).unwrap();
                barrier.wait();
                for _ in 0..ROWS {
                    let insert = with(
                        exec(0, "INSERT INTO t (who) VALUES (?)"),
                        vec![Value::Integer(who as i64)],
                    );
                    let Answer::Result { last_insert_id, .. } = remote.run(&insert).unwrap() else {
                        panic!("insert failed");
                    };
                    let id = last_insert_id as i64;
                    let check = query(
                        0,
                        "SELECT (SELECT who FROM t WHERE id = last_insert_rowid()), changes()",
                    );
                    let Answer::Rows { rows, .. } = remote.run(&check).unwrap() else {
                        panic!("check failed");
                    };
                    assert_eq!(rows.len(), 1);
                    assert_eq!(rows[0], vec![Cell::Integer(who as i64), Cell::Integer(1)]);
                    let record = with(
                        exec(0, "INSERT INTO mine VALUES (?)"),
                        vec![Value::Integer(id)],
                    );
                    assert!(!is_failure(&remote.run(&record).unwrap()));
                }
                let mine = query(
                    0,
                    "SELECT count(*) FROM mine JOIN t USING (id) WHERE who = ?",
                );
                let Answer::Rows { rows, .. } = remote
                    .run(&with(mine, vec![Value::Integer(who as i64)]))
                    .unwrap()
                else {
                    panic!("count failed");
                };
                assert_eq!(rows[0], vec![Cell::Integer(ROWS as i64)]);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let total = setup.run(&query(0, "SELECT count(*) FROM t")).unwrap();
    assert_eq!(
        total,
        Answer::Rows {
            columns: vec!["count(*)".into()],
            rows: vec![vec![Cell::Integer((SESSIONS * ROWS) as i64)]]
        }
    );
}

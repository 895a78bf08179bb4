//! What one client session sees, compared with what SQLite (or the newest dqlite) answers:
//! results of any shape streamed whole, EXEC of a statement that yields rows, bind errors with
//! SQLite's own texts, busy answers behind another session's transaction, stored bytes returned
//! exactly.

use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, ClientError, Connection};
use atoll_net::protocol::{Request, Response, RowsEnd, Value};

use crate::support::{AtollNode, Node};

fn connect(node: &AtollNode) -> Connection {
    let mut connection = Connection::connect(node.address(), &ClientConfig::default()).unwrap();
    connection.open("session").unwrap();
    connection
}

fn failure<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u64, String) {
    match result {
        Err(ClientError::Failure { code, message }) => (code, message),
        other => panic!("expected a FAILURE, got {other:?}"),
    }
}

/// Results whose column names alone exceed a 4 KiB ROWS batch (1000 columns), rows of 8 KiB
/// and a single 8 MiB cell stream whole: dqlite 1.11 answers the first with empty batches for
/// ever.
#[test]
fn test_wide_and_large_results_stream_whole() {
    let node = AtollNode::start();
    let mut connection = connect(&node);
    let params: Vec<Value> = (0..1000).map(Value::Integer).collect();
    let placeholders = vec!["?"; 1000].join(", ");
    // On the wire: the first ROWS message carries the row (not an empty batch, then another).
    connection
        .send(&Request::QuerySql {
            db_id: 0,
            sql: format!("SELECT {placeholders}"),
            params: params.clone(),
        })
        .unwrap();
    match connection.receive().unwrap() {
        Response::Rows(rows) => {
            assert_eq!(rows.rows.len(), 1, "the first batch holds the row");
            assert_eq!(rows.rows, vec![params.clone()]);
            assert_eq!(rows.end, RowsEnd::Done);
        }
        other => panic!("{other:?}"),
    }
    let result = connection
        .query_sql(&format!("SELECT {placeholders}"), &params)
        .unwrap();
    assert_eq!(result.columns.len(), 1000);
    assert_eq!(result.rows, vec![params.clone()]);
    // Three rows of 1000 columns: every batch makes progress.
    let union = format!("SELECT {placeholders} UNION ALL SELECT {placeholders}");
    let twice: Vec<Value> = params.iter().chain(&params).cloned().collect();
    let result = connection.query_sql(&union, &twice).unwrap();
    assert_eq!(result.rows.len(), 2);
    connection
        .exec_sql("CREATE TABLE wide (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    connection
        .exec_sql(
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 20) \
             INSERT INTO wide (v) SELECT randomblob(8192) FROM c",
            &[],
        )
        .unwrap();
    let result = connection.query_sql("SELECT v FROM wide", &[]).unwrap();
    assert_eq!(result.rows.len(), 20);
    assert!(result
        .rows
        .iter()
        .all(|row| matches!(&row[0], Value::Blob(b) if b.len() == 8192)));
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    connection
        .exec_sql(
            "INSERT INTO wide (v) VALUES (?)",
            &[Value::Blob(big.clone())],
        )
        .unwrap();
    let result = connection
        .query_sql("SELECT v FROM wide WHERE length(v) > 10000", &[])
        .unwrap();
    assert_eq!(result.rows, vec![vec![Value::Blob(big)]]);
}

/// EXEC and EXEC_SQL of a statement that yields rows fail as the newest dqlite fails them
/// (FAILURE 1), and bind errors carry SQLite's own code and text.
#[test]
fn test_exec_of_rows_and_bind_errors_answer_as_dqlite() {
    let node = AtollNode::start();
    let mut connection = connect(&node);
    connection.exec_sql("CREATE TABLE t (v)", &[]).unwrap();
    let rows_in_exec = (
        1,
        "rows yielded when none expected for EXEC request".to_owned(),
    );
    assert_eq!(failure(connection.exec_sql("SELECT 1", &[])), rows_in_exec);
    let (statement, _) = connection
        .prepare("SELECT * FROM (VALUES (1), (2))")
        .unwrap();
    assert_eq!(failure(connection.exec(statement, &[])), rows_in_exec);
    // A statement without rows still answers RESULT.
    connection
        .exec_sql("INSERT INTO t VALUES (1)", &[])
        .unwrap();
    // More values than parameters: SQLITE_RANGE with sqlite3_errstr's text, for every request.
    let range = (25, "column index out of range".to_owned());
    let two = [Value::Integer(1), Value::Integer(2)];
    assert_eq!(
        failure(connection.exec_sql("INSERT INTO t VALUES (?)", &two)),
        range
    );
    assert_eq!(failure(connection.query_sql("SELECT ?", &two)), range);
    let (statement, _) = connection.prepare("INSERT INTO t VALUES (?)").unwrap();
    assert_eq!(failure(connection.exec(statement, &two)), range);
    let (statement, _) = connection.prepare("SELECT ?").unwrap();
    assert_eq!(failure(connection.query(statement, &two)), range);
    // Nothing of the failed requests was written.
    let count = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(count.rows, vec![vec![Value::Integer(1)]]);
}

/// A writer behind another session's explicit transaction gets SQLITE_BUSY "database is
/// locked" after the bounded wait (500 ms by default), well inside the clients' 5 s timeouts,
/// and its connection stays usable; once the transaction ends, it writes.
#[test]
fn test_writer_behind_an_explicit_transaction_gets_busy_promptly() {
    let node = AtollNode::start();
    let mut holder = connect(&node);
    let mut writer = connect(&node);
    holder.exec_sql("CREATE TABLE t (v)", &[]).unwrap();
    holder.exec_sql("BEGIN", &[]).unwrap();
    holder.exec_sql("INSERT INTO t VALUES (1)", &[]).unwrap();
    let start = Instant::now();
    let answer = failure(writer.exec_sql("INSERT INTO t VALUES (2)", &[]));
    let waited = start.elapsed();
    assert_eq!(answer, (5, "database is locked".to_owned()));
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // A write that started to wait while the transaction was open goes once it commits.
    holder.exec_sql("COMMIT", &[]).unwrap();
    writer.exec_sql("INSERT INTO t VALUES (2)", &[]).unwrap();
    let rows = writer.query_sql("SELECT v FROM t ORDER BY v", &[]).unwrap();
    assert_eq!(
        rows.rows,
        vec![vec![Value::Integer(1)], vec![Value::Integer(2)]]
    );
}

/// TEXT holding bytes that are not UTF-8 comes back byte for byte (as dqlite returns it), from
/// SQL and from a parameter, and still as TEXT.
#[test]
fn test_text_that_is_not_utf8_is_returned_exactly() {
    let node = AtollNode::start();
    let mut connection = connect(&node);
    connection.exec_sql("CREATE TABLE t (v)", &[]).unwrap();
    connection
        .exec_sql("INSERT INTO t VALUES (CAST(x'ff61c3' AS TEXT))", &[])
        .unwrap();
    connection
        .exec_sql(
            "INSERT INTO t VALUES (?)",
            &[Value::RawText(vec![0x80, b'b', 0xfe])],
        )
        .unwrap();
    let rows = connection
        .query_sql("SELECT v, typeof(v), hex(v) FROM t ORDER BY rowid", &[])
        .unwrap();
    let text = |s: &str| Value::Text(s.to_owned());
    assert_eq!(
        rows.rows,
        vec![
            vec![
                Value::RawText(vec![0xff, b'a', 0xc3]),
                text("text"),
                text("FF61C3")
            ],
            vec![
                Value::RawText(vec![0x80, b'b', 0xfe]),
                text("text"),
                text("8062FE")
            ],
        ]
    );
}

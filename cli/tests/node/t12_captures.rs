//! dqlite 1.11's captured traffic (`net/tests/captures/`, captures 01–17: the ones that need
//! a single node) replayed against a fresh `atoll start`: every answer decodes to the values
//! dqlite sent (node ids, addresses, DUMP bytes and batch boundaries aside), except the
//! differences listed in [`INTENTIONAL`], where atoll follows newer dqlite or fixes a 1.11 bug.

use std::path::PathBuf;
use std::time::Duration;

use atoll_net::capture::{load_captures, replay, Outcome, ReplayOptions};
use atoll_net::client::{Client, ClientConfig};

use crate::support::{AtollNode, Node};

/// Where atoll answers differently from dqlite 1.11, on purpose: (capture, index of the request
/// in the capture's replay, its name). The comment above each says what atoll answers and why.
const INTENTIONAL: &[(&str, usize, &str)] = &[
    // DUMP answers a full image of the database and an empty WAL (as newer dqlite does), not
    // the main file and the live WAL: the image is consistent without applying a WAL.
    ("10-shell-dump", 0, "DUMP"),
    // EXEC of a prepared statement without a parameter tuple binds NULL (as newer dqlite does);
    // 1.11 reused the previous execution's values. The row inserted differs, so the QUERY that
    // reads it back shows NULLs where 1.11 repeated the earlier values.
    ("13-raw-prepared", 7, "QUERY"),
    // EXEC_SQL of a statement that yields rows fails as the newest dqlite fails it (FAILURE 1
    // "rows yielded when none expected for EXEC request"); 1.11 answered FAILURE 100 "another
    // row available".
    ("14-raw-errors", 15, "EXEC_SQL"),
    // A query without result columns (QUERY_SQL of a DELETE) runs and answers an empty ROWS
    // (as dqlite 1.18.3+), where 1.11 refused it with FAILURE 1 "not an error".
    ("14-raw-errors", 16, "QUERY_SQL"),
    // A UNIXTIME parameter is refused with the same code (1005) and a message that says why,
    // where 1.11 said "not an error".
    (
        "14-raw-errors",
        19,
        "undecodable (value type 9 is not allowed here)",
    ),
    // HEARTBEAT and an unknown request type get FAILURE 1005 "unrecognized request type" (as
    // newer dqlite); 1.11 sent nothing, and the client hung.
    ("17-raw-no-reply", 1, "HEARTBEAT"),
    (
        "17-raw-no-reply",
        3,
        "undecodable (unrecognized request type 42)",
    ),
];

#[test]
fn test_captures_replay_against_atoll() {
    let node = AtollNode::start();
    let address: std::net::SocketAddr = node.address().parse().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../net/tests/captures");
    let captures = load_captures(&dir).unwrap();
    let mut options = ReplayOptions::single(address);
    options.silence_timeout = Duration::from_millis(300);
    options.mid_stream_database = Some("demo".into());
    let mut summary = String::new();
    let mut different = Vec::new();
    let mut replayed = 0;
    for capture in &captures {
        let number: u32 = capture.name[..2].parse().unwrap();
        if number > 17 {
            continue; // 18–22 need a second node (issue 6).
        }
        if number == 10 {
            let mut client = Client::connect(&[node.address()], ClientConfig::default()).unwrap();
            client.open("dumpme").unwrap();
            for sql in [
                "CREATE TABLE kv (k TEXT, v TEXT)",
                "INSERT INTO kv VALUES ('a', 'b')",
            ] {
                client.exec_sql("BEGIN", &[]).unwrap();
                client.exec_sql(sql, &[]).unwrap();
                client.exec_sql("COMMIT", &[]).unwrap();
            }
        }
        if number == 11 {
            // dqlite-demo's own table, which capture 11's pooled connection writes.
            let mut client = Client::connect(&[node.address()], ClientConfig::default()).unwrap();
            client.open("demo").unwrap();
            client
                .exec_sql(
                    "CREATE TABLE IF NOT EXISTS model (key TEXT, value TEXT, UNIQUE(key))",
                    &[],
                )
                .unwrap();
        }
        let report = replay(capture, &options).unwrap();
        summary.push_str(&report.to_string());
        assert!(report.skipped.is_empty(), "{report}");
        for (index, step) in report.steps.iter().enumerate() {
            if let Outcome::Different { .. } = step.outcome {
                let name = atoll_net::capture::request_name(&step.request);
                different.push((capture.name.clone(), index, name));
            }
        }
        replayed += 1;
    }
    println!("{summary}");
    assert_eq!(replayed, 17, "captures 01-17 replayed");
    let intentional: Vec<(String, usize, String)> = INTENTIONAL
        .iter()
        .map(|(capture, index, name)| (capture.to_string(), *index, name.to_string()))
        .collect();
    assert_eq!(
        different, intentional,
        "the differences from dqlite 1.11 are exactly the intentional ones:\n{summary}"
    );
}

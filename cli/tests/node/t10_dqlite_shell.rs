//! The `dqlite` shell (go-dqlite 1.11.5, Debian) against `atoll start`.

use std::process::Command;

use crate::support::{require, run_command, AtollNode, Node, Output};

fn dqlite(address: &str, database: &str, sql: &str) -> Output {
    require("dqlite");
    let mut command = Command::new("dqlite");
    command.args(["-s", address, database, sql]);
    run_command(command, None)
}

/// Tables with every storage class, NULLs and blobs, read back in the dqlite shell's format;
/// a syntax error is reported with SQLite's message and a failing exit status.
#[test]
fn test_dqlite_shell_types_nulls_blobs_and_errors() {
    let node = AtollNode::start();
    let address = node.address();
    dqlite(
        address,
        "shell",
        "CREATE TABLE types (i INTEGER, r REAL, t TEXT, b BLOB)",
    )
    .ok();
    dqlite(
        address,
        "shell",
        "INSERT INTO types VALUES (42, 3.5, 'hello', x'00ff10'), (NULL, NULL, NULL, NULL), \
         (-9223372036854775808, -0.125, 'ünï', x'')",
    )
    .ok();
    let out = dqlite(
        address,
        "shell",
        "SELECT i, r, t, b FROM types ORDER BY rowid",
    );
    assert_eq!(
        out.ok(),
        "42|3.5|hello|[0 255 16]\n<nil>|<nil>|<nil>|<nil>\n-9223372036854775808|-0.125|ünï|[]\n"
    );
    let error = dqlite(address, "shell", "SELEC 1");
    assert!(!error.status.success());
    assert!(
        error.stderr.contains("near \"SELEC\": syntax error"),
        "{error:?}"
    );
    let error = dqlite(address, "shell", "SELECT * FROM nosuch");
    assert!(error.stderr.contains("no such table: nosuch"), "{error:?}");
}

/// 10,000 rows come back whole (many ROWS batches with PART, then DONE).
#[test]
fn test_dqlite_shell_ten_thousand_rows() {
    let node = AtollNode::start();
    let address = node.address();
    dqlite(address, "big", "CREATE TABLE big (n INTEGER, s TEXT)").ok();
    dqlite(
        address,
        "big",
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 10000) \
         INSERT INTO big SELECT n, 'row ' || n FROM c",
    )
    .ok();
    let out = dqlite(address, "big", "SELECT n, s FROM big ORDER BY n");
    let lines: Vec<&str> = out.ok().lines().collect();
    assert_eq!(lines.len(), 10_000);
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("{}|row {}", index + 1, index + 1));
    }
}

/// The dot-commands: `.cluster` lists this node as a voter, `.leader` names its exact address,
/// `.describe` and `.weight` round-trip the weight, `.dump` writes a full image and an empty
/// WAL that SQLite opens.
#[test]
fn test_dqlite_shell_dot_commands() {
    let node = AtollNode::start();
    let address = node.address();
    assert_eq!(
        dqlite(address, "db", ".cluster").ok(),
        format!("1|{address}|voter\n")
    );
    assert_eq!(
        dqlite(address, "db", ".leader").ok(),
        format!("{address}\n")
    );
    assert_eq!(
        dqlite(address, "db", &format!(".describe {address}")).ok(),
        format!("{address}|0|0\n")
    );
    dqlite(address, "db", &format!(".weight {address} 7")).ok();
    assert_eq!(
        dqlite(address, "db", &format!(".describe {address}")).ok(),
        format!("{address}|0|7\n")
    );

    dqlite(address, "dumped", "CREATE TABLE kv (k TEXT, v BLOB)").ok();
    dqlite(
        address,
        "dumped",
        "INSERT INTO kv VALUES ('a', randomblob(5000)), ('b', x'0102')",
    )
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("dqlite");
    command
        .args(["-s", address, "dumped", &format!(".dump {address} dumped")])
        .current_dir(dir.path());
    run_command(command, None).ok();
    let wal = std::fs::metadata(dir.path().join("dumped-wal")).unwrap();
    assert_eq!(wal.len(), 0, "atoll dumps a full image and an empty WAL");
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("dumped"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (count, length): (i64, i64) = db
        .query_row("SELECT count(*), sum(length(v)) FROM kv", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((count, length), (2, 5002));
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

//! `atoll dump` against a real server: the file it writes is a whole SQLite database (checked
//! byte by byte in its header, then opened by SQLite itself through rusqlite, a test-only
//! dependency) holding exactly the rows the cluster serves. dqlite 1.11 answers DUMP with the
//! main file and the live WAL, so this exercises the WAL application on real logs.

mod support;

use std::path::Path;

use support::{atoll, shell, Cluster, ServerKind};

fn dump(cluster: &str, database: &str, output: &Path) -> support::Output {
    atoll(&[
        "dump",
        "--cluster",
        cluster,
        database,
        "-o",
        output.to_str().expect("UTF-8 path"),
    ])
}

fn read_u32_be(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// Several transactions (inserts, an update, deletes, a blob larger than a page so overflow
/// pages are involved, and an index), then a dump: its header says what its length says, and
/// SQLite reads back exactly what the shell reads from the cluster.
fn scenario_dump_is_a_consistent_database(cluster: &Cluster) {
    let address = cluster.address(0);
    shell(
        address,
        "app",
        &[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB); \
           CREATE INDEX items_name ON items (name); \
           WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 2000) \
           INSERT INTO items (name, price) SELECT 'item ' || n, n * 0.5 FROM c; \
           UPDATE items SET data = randomblob(10001) WHERE id = 7; \
           DELETE FROM items WHERE id % 10 = 0; \
           INSERT INTO items (name, price, data) VALUES ('last', NULL, x'0102')",
        ],
    )
    .ok();
    let expected = shell(
        address,
        "app",
        &[
            "-f",
            "csv",
            "SELECT count(*), sum(id), sum(price), sum(length(data)) FROM items",
        ],
    );
    let expected = expected.ok().lines().nth(1).unwrap().to_owned();
    let blob_hex = shell(
        address,
        "app",
        &["-f", "csv", "SELECT data FROM items WHERE id = 7"],
    );
    let blob_hex = blob_hex.ok().lines().nth(1).unwrap().to_owned();
    assert_eq!(blob_hex.len(), 20_002);

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("app.db");
    let out = dump(address, "app", &output);
    assert!(out.ok().starts_with("wrote "), "{}", out.stdout);
    if cluster.kind == ServerKind::DqliteDemo {
        // dqlite 1.11 sends its live WAL: the frames were applied here, not by the server.
        let frames: u64 = out
            .stdout
            .split(", ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no frame count in {:?}", out.stdout));
        assert!(frames > 10, "{}", out.stdout);
    }

    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    let page_bytes = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65_536,
        size => usize::from(size),
    };
    assert!(page_bytes.is_power_of_two() && page_bytes >= 512);
    assert_eq!(bytes.len() % page_bytes, 0);
    let pages = bytes.len() / page_bytes;
    assert!(
        pages > 10,
        "2000 rows and a 10 KB blob take more than 10 pages"
    );
    assert_eq!(read_u32_be(&bytes, 28) as usize, pages, "header page count");
    assert_eq!(
        read_u32_be(&bytes, 24),
        read_u32_be(&bytes, 92),
        "page count is valid"
    );
    assert!(
        out.stdout
            .contains(&format!("{pages} pages of {page_bytes} bytes")),
        "{}",
        out.stdout
    );

    let db =
        rusqlite::Connection::open_with_flags(&output, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (count, ids, prices, lengths): (i64, i64, f64, i64) = db
        .query_row(
            "SELECT count(*), sum(id), sum(price), sum(length(data)) FROM items",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(format!("{count},{ids},{prices:.1},{lengths}"), expected);
    let blob: Vec<u8> = db
        .query_row("SELECT data FROM items WHERE id = 7", [], |r| r.get(0))
        .unwrap();
    let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, blob_hex, "the overflowing blob is whole");

    // `atoll backup` streams the same answer to disk (dqlite's live WAL applied in memory).
    let backup = dir.path().join("backup.db");
    let out = atoll(&[
        "backup",
        "--cluster",
        address,
        "app",
        "-o",
        backup.to_str().unwrap(),
    ]);
    assert!(out.ok().contains("wrote "), "{}", out.stdout);
    let db =
        rusqlite::Connection::open_with_flags(&backup, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (count, ids, prices, lengths): (i64, i64, f64, i64) = db
        .query_row(
            "SELECT count(*), sum(id), sum(price), sum(length(data)) FROM items",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(format!("{count},{ids},{prices:.1},{lengths}"), expected);
}

#[test]
fn test_dump_is_a_consistent_database() {
    scenario_dump_is_a_consistent_database(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_dump_is_a_consistent_database() {
    scenario_dump_is_a_consistent_database(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// A dump replaces an existing file whole; a later write shows up in the next dump.
fn scenario_dump_replaces_the_file(cluster: &Cluster) {
    let address = cluster.address(0);
    shell(
        address,
        "again",
        &["CREATE TABLE t (x); INSERT INTO t VALUES (1)"],
    )
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("again.db");
    std::fs::write(&output, b"an older file that is not a database").unwrap();
    dump(address, "again", &output).ok();
    shell(address, "again", &["INSERT INTO t VALUES (2)"]).ok();
    dump(address, "again", &output).ok();
    let db = rusqlite::Connection::open(&output).unwrap();
    let sum: i64 = db
        .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sum, 3);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn test_dump_replaces_an_existing_file() {
    scenario_dump_replaces_the_file(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_dump_replaces_an_existing_file() {
    scenario_dump_replaces_the_file(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// Bad requests change nothing: an unknown database, and a target whose -wal file shows it is
/// in use (SQLite would apply that log to the new file).
fn scenario_dump_refusals(cluster: &Cluster) {
    let address = cluster.address(0);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("none.db");
    let out = dump(address, "no-such-database", &output);
    let stderr = out.failed();
    assert!(
        stderr.contains("no data for database \"no-such-database\"")
            || stderr.contains("no database named \"no-such-database\""),
        "{stderr}"
    );
    assert!(!output.exists());

    shell(address, "busy", &["CREATE TABLE t (x)"]).ok();
    let output = dir.path().join("busy.db");
    std::fs::write(&output, b"keep me").unwrap();
    std::fs::write(dir.path().join("busy.db-wal"), b"a live log").unwrap();
    let out = dump(address, "busy", &output);
    assert!(
        out.failed().contains("busy.db-wal exists"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"keep me");
}

#[test]
fn test_dump_refuses_and_changes_nothing() {
    scenario_dump_refusals(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_dump_refuses_and_changes_nothing() {
    scenario_dump_refusals(&Cluster::start_kind(ServerKind::Atoll, 1));
}

//! One client or one bad file must not hurt the node: an idle reader (the loop never waits in
//! SQLite; its transaction is rolled back past the limit), request headers announcing huge
//! bodies (buffers grow as bytes arrive), oversized parameter lists, many database names under
//! a low open-file limit, and a corrupt page.

use std::io::{Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atoll_net::blocking::read_message;
use atoll_net::client::{ClientError, Connection};
use atoll_net::protocol::{Response, ResponseContext, Value, HEADER_BYTES};

use crate::support::{atoll, free_address, wait_for, AtollNode, DqliteDemo, Node};

fn connect(address: &str, database: &str) -> Connection {
    let mut connection = Connection::connect(address, &DqliteDemo::quick_config()).unwrap();
    connection.open(database).unwrap();
    connection
}

/// The FAILURE of `result`, as (code, message).
fn failure<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u64, String) {
    match result {
        Err(ClientError::Failure { code, message }) => (code, message),
        other => panic!("expected a FAILURE, got {other:?}"),
    }
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether this is a 32-bit process emulated by qemu-user on a 64-bit host: its
/// `/proc/self/status` is then the host process's, whose address space (the guest's 4 GiB,
/// reserved, plus qemu's own) is larger than any 32-bit process can have.
fn emulated_32_bit_guest() -> bool {
    cfg!(target_pointer_width = "32") && status_kib(std::process::id(), "VmSize") > 4 << 20
}

/// A client holds a read transaction open and goes idle while others write. Before, every
/// forced checkpoint (snapshots, here every 50 entries) waited in SQLite's 5 s busy handler on
/// the loop thread: LEADER took seconds to answer. Now the loop never waits, the transaction is
/// rolled back once it is older than the limit (its client is told), and checkpoints resume.
#[test]
fn test_an_idle_reader_does_not_stall_the_node() {
    let node = AtollNode::start_with(&[
        "--transaction-timeout-ms",
        "4000",
        "--snapshot-entries",
        "50",
    ]);
    let address = node.address().to_owned();
    let mut writer = connect(&address, "db");
    writer.exec_sql("CREATE TABLE t(x BLOB)", &[]).unwrap();
    let mut reader = connect(&address, "db");
    let began = Instant::now();
    reader.exec_sql("BEGIN", &[]).unwrap();
    reader.query_sql("SELECT count(*) FROM t", &[]).unwrap();

    // LEADER, asked every 10 ms on its own connection while the writes go on.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let address = address.clone();
        std::thread::spawn(move || {
            let mut probe = Connection::connect(&address, &DqliteDemo::quick_config()).unwrap();
            let mut slowest = Duration::ZERO;
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                probe.leader().unwrap();
                slowest = slowest.max(asked.elapsed());
                count += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (slowest, count)
        })
    };
    for i in 0..300 {
        writer
            .exec_sql(
                "INSERT INTO t VALUES (?)",
                &[Value::Blob(vec![i as u8; 3000])],
            )
            .unwrap();
    }
    let writes_took = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (slowest, probes) = prober.join().unwrap();
    eprintln!("300 writes in {writes_took:?}; slowest LEADER of {probes}: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(200),
        "LEADER took {slowest:?} while a reader was idle"
    );

    // Past the limit the reader's transaction is gone, and its client hears so.
    let limit = Duration::from_millis(4000);
    if let Some(left) = limit.checked_sub(began.elapsed()) {
        std::thread::sleep(left + Duration::from_millis(500));
    }
    let (code, message) = failure(reader.query_sql("SELECT count(*) FROM t", &[]));
    assert_eq!(code, 4, "{message}"); // SQLITE_ABORT
    assert!(message.contains("rolled back"), "{message}");
    let rows = reader.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(300)]]);

    // Checkpoints happen again: once the node is idle, the WAL is copied and truncated.
    let wal = node.data_dir().join("db").join("db-wal");
    wait_for(
        "the WAL to be checkpointed",
        Duration::from_secs(20),
        || (std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0).then_some(()),
    );
}

/// Connections that send a request header declaring a 64 MiB body, then nothing. Before, each
/// header reserved the whole frame: 30 of them took 2 GB of address space, and a node limited
/// to 1 GiB (an armv7 board) aborted. Now buffers grow with the bytes that arrive.
///
/// Under qemu-user with a 32-bit guest (the armv7 cross run) neither the limit nor the
/// measure can see the guest: qemu reserves the guest's whole 4 GiB up front (so it cannot
/// start under a 1 GiB limit) and the guest's allocations land inside that reservation (so the
/// host's VmSize does not move). There the node runs unlimited and only its service is checked;
/// a real armv7 board runs the whole test.
#[test]
fn test_request_headers_alone_reserve_no_memory() {
    let emulated = emulated_32_bit_guest();
    let mut node = AtollNode::init(&free_address(), &[]);
    if !emulated {
        node.wrapper = ["prlimit", "--as=1073741824", "--"]
            .map(String::from)
            .to_vec();
    }
    node.restart();
    let address = node.address().to_owned();
    let mut client = connect(&address, "db");
    client.exec_sql("CREATE TABLE t(x)", &[]).unwrap();
    let before = status_kib(node.pid(), "VmSize");
    let words = (64u32 << 20) / 8;
    let mut header = 1u64.to_le_bytes().to_vec();
    header.extend_from_slice(&words.to_le_bytes());
    header.extend_from_slice(&[8, 0, 0, 0]); // EXEC_SQL
    let idle: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(&header).unwrap();
            stream
        })
        .collect();
    // Served throughout (a LEADER answer comes after every header was read).
    for i in 0..20 {
        client
            .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(i)])
            .unwrap();
    }
    let after = status_kib(node.pid(), "VmSize");
    eprintln!("VmSize {before} KiB before, {after} KiB with 30 header-only connections");
    if emulated {
        eprintln!("a 32-bit guest under qemu-user: the host's VmSize says nothing of the guest's");
    } else {
        assert!(
            after < before + 64 * 1024,
            "VmSize grew from {before} to {after} KiB"
        );
    }
    assert!(node.metadata().is_some());
    drop(idle);
}

/// More parameters than a statement can take: a clear error, the connection goes on. Before,
/// 7 million one-byte parameters (a 63 MB request) were decoded and copied: over 500 MB.
#[test]
fn test_oversized_parameter_lists_are_refused() {
    let node = AtollNode::start();
    let mut client = connect(node.address(), "db");
    client.exec_sql("CREATE TABLE t(x)", &[]).unwrap();
    let params = vec![Value::Integer(1); 40_000];
    let (code, message) = failure(client.exec_sql("INSERT INTO t VALUES (?)", &params));
    assert_eq!(code, 1005, "{message}");
    assert!(message.contains("too many parameters"), "{message}");

    // EXEC_SQL with 7,000,000 INTEGER parameters, written by hand (schema 1: 32-bit count).
    let count: u32 = 7_000_000;
    let mut body = 0u64.to_le_bytes().to_vec(); // db id
    body.extend_from_slice(b"SELECT ?\0\0\0\0\0\0\0\0");
    body.extend_from_slice(&count.to_le_bytes());
    body.resize(body.len() + count as usize, 1);
    body.resize(body.len().next_multiple_of(8), 0);
    body.resize(body.len() + 8 * count as usize, 0);
    let mut frame = 1u64.to_le_bytes().to_vec(); // version
    frame.extend_from_slice(&u32::try_from(body.len() / 8).unwrap().to_le_bytes());
    frame.extend_from_slice(&[8, 1, 0, 0]); // EXEC_SQL, schema 1
    frame.extend_from_slice(&body);
    drop(body);
    let peak_before = status_kib(node.pid(), "VmHWM");
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&frame).unwrap();
    let mut message = Vec::new();
    let header = read_message(&mut stream, 1 << 20, &mut message).unwrap();
    let response = Response::decode(
        header,
        &message[HEADER_BYTES..],
        &ResponseContext::default(),
    )
    .unwrap();
    let Response::Failure { code, message } = response else {
        panic!("expected a FAILURE, got {response:?}");
    };
    assert_eq!(code, 1005, "{message}");
    assert!(message.contains("too many parameters"), "{message}");
    let peak_after = status_kib(node.pid(), "VmHWM");
    eprintln!("peak RSS {peak_before} KiB before, {peak_after} KiB after");
    // The request's own bytes (63 MB) are buffered; nothing is decoded from them.
    assert!(
        peak_after < peak_before + 160 * 1024,
        "peak RSS grew from {peak_before} to {peak_after} KiB"
    );

    client
        .exec_sql("INSERT INTO t VALUES (?)", &params[..1])
        .unwrap();
    let rows = client.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(1)]]);
}

/// Many database names under `ulimit -n 128`. Before, each name kept two descriptors forever:
/// creation failed with I/O errors once they ran out, and the node could not start again. Now
/// at most (128 - 32 - 64) / 2 = 16 databases are open at once: idle ones are closed to make
/// room, OPEN fails clearly only when all 16 are in use, and a restart opens no more than 16.
#[test]
fn test_databases_beyond_the_open_file_limit() {
    let mut node = AtollNode::init(&free_address(), &[]);
    node.wrapper = ["prlimit", "--nofile=128:128", "--"]
        .map(String::from)
        .to_vec();
    node.restart();
    let address = node.address().to_owned();
    for i in 0..60 {
        let mut connection = connect(&address, &format!("db{i}"));
        connection.exec_sql("CREATE TABLE t(x)", &[]).unwrap();
        connection
            .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(i)])
            .unwrap();
    }
    // Sixteen clients keep sixteen databases in use: a seventeenth cannot be opened.
    let mut held: Vec<Connection> = (0..16)
        .map(|i| connect(&address, &format!("db{i}")))
        .collect();
    for connection in &mut held {
        connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    }
    let mut other = Connection::connect(&address, &DqliteDemo::quick_config()).unwrap();
    let (code, message) = failure(other.open("db40"));
    assert!(
        message.contains("too many databases open"),
        "{code}: {message}"
    );
    // Still serving the ones in use; once a client leaves, its database can make room.
    held[3].exec_sql("INSERT INTO t VALUES (100)", &[]).unwrap();
    drop(held.remove(0));
    wait_for("room for another database", Duration::from_secs(10), || {
        let mut connection = Connection::connect(&address, &DqliteDemo::quick_config()).ok()?;
        connection.open("db40").ok()?;
        let rows = connection.query_sql("SELECT x FROM t", &[]).ok()?;
        (rows.rows == vec![vec![Value::Integer(40)]]).then_some(())
    });
    drop(held);

    // A restart under the same limit opens at most 16 of the 60; every one still answers.
    node.stop();
    node.restart();
    for i in [0, 3, 15, 59] {
        let mut connection = connect(&address, &format!("db{i}"));
        let rows = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
        let expected = if i == 3 { 2 } else { 1 };
        assert_eq!(rows.rows, vec![vec![Value::Integer(expected)]], "db{i}");
    }
}

/// A page of a database file damaged while the node was down: the node starts, refuses writes
/// to that database with a clear error, says so in its log and in `atoll cluster`, and serves
/// the other databases as before.
#[test]
fn test_a_corrupt_page_refuses_writes_to_its_database() {
    let mut node = AtollNode::start();
    let address = node.address().to_owned();
    for name in ["bad", "good"] {
        let mut client = connect(&address, name);
        client.exec_sql("CREATE TABLE t(x TEXT)", &[]).unwrap();
        for i in 0..30 {
            client
                .exec_sql(
                    "INSERT INTO t VALUES (?)",
                    &[Value::Text(format!("{i:0>600}"))],
                )
                .unwrap();
        }
    }
    node.stop(); // checkpoints: every page is in the main file
    let path = node.data_dir().join("db").join("bad");
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap(); // page 2: the table's root
    file.write_all(&[0x55; 16]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    node.restart();

    let mut bad = connect(&address, "bad");
    let (code, message) = failure(bad.exec_sql("INSERT INTO t VALUES ('x')", &[]));
    assert_eq!(code, 11, "{message}"); // SQLITE_CORRUPT
    assert!(
        message.contains("corrupt") && message.contains("refused"),
        "{message}"
    );
    let mut good = connect(&address, "good");
    let rows = good.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(30)]]);
    good.exec_sql("INSERT INTO t VALUES ('y')", &[]).unwrap();

    assert_eq!(node.metadata().unwrap().corrupt_databases, 1);
    let listing = atoll(&["cluster", "--cluster", &address, "--format", "json"]);
    assert!(
        listing.ok().contains("\"corrupt_databases\":1"),
        "{}",
        listing.ok()
    );
    assert!(
        node.log().contains("database \"bad\" is corrupt"),
        "{}",
        node.log()
    );
}

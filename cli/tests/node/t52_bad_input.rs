//! Bad input on the client port: every kind gets a FAILURE or a closed connection, and a
//! well-behaved client on another connection is served throughout and loses nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use atoll_net::blocking::read_message;
use atoll_net::client::{ClientConfig, Connection};
use atoll_net::protocol::{Request, Response, ResponseContext, Value, HEADER_BYTES};

use crate::support::{AtollNode, Node};

fn raw(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn read_response(stream: &mut TcpStream) -> Option<Response> {
    let mut message = Vec::new();
    let header = read_message(stream, 1 << 20, &mut message).ok()?;
    Some(
        Response::decode(
            header,
            &message[HEADER_BYTES..],
            &ResponseContext::default(),
        )
        .unwrap(),
    )
}

fn failure_code(response: Option<Response>) -> u64 {
    match response {
        Some(Response::Failure { code, .. }) => code,
        other => panic!("expected FAILURE, got {other:?}"),
    }
}

/// Whether the server closed the connection (EOF) without sending anything more.
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

fn header(words: u32, kind: u8) -> Vec<u8> {
    let mut bytes = words.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[kind, 0, 0, 0]);
    bytes
}

fn message(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out);
    out
}

#[test]
fn test_bad_input_gets_failures_and_others_are_served() {
    let node = AtollNode::start();
    let address = node.address().to_owned();
    let mut good = Connection::connect(&address, &ClientConfig::default()).unwrap();
    good.open("bad").unwrap();
    good.exec_sql("CREATE TABLE t (x INTEGER)", &[]).unwrap();
    let mut inserted = 0;
    let mut serve = |good: &mut Connection| {
        inserted += 1;
        good.exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(inserted)])
            .unwrap();
    };

    // A wrong protocol version: closed without a byte, as dqlite does.
    let mut stream = raw(&address);
    stream.write_all(&2u64.to_le_bytes()).unwrap();
    assert!(closed(&mut stream));
    serve(&mut good);

    // An empty body, an unknown type, invalid UTF-8 in SQL text, a UNIXTIME parameter:
    // FAILURE, and the same connection goes on.
    let mut stream = raw(&address);
    stream.write_all(&1u64.to_le_bytes()).unwrap();
    stream.write_all(&header(0, 8)).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 1005);
    let mut unknown = header(1, 42);
    unknown.extend_from_slice(&[0; 8]);
    stream.write_all(&unknown).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 1005);
    let mut heartbeat = header(1, 2);
    heartbeat.extend_from_slice(&[0; 8]);
    stream.write_all(&heartbeat).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 1005);
    let open = message(&Request::Open {
        name: "bad".into(),
        flags: 0,
        vfs: String::new(),
    });
    stream.write_all(&open).unwrap();
    assert!(matches!(
        read_response(&mut stream),
        Some(Response::Db { id: 0 })
    ));
    let mut utf8 = header(2, 8);
    utf8.extend_from_slice(&[0; 8]);
    utf8.extend_from_slice(&[0xff, 0xfe, b'x', 0, 0, 0, 0, 0]);
    stream.write_all(&utf8).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 1005);
    // Unknown and freed statement ids.
    let exec = message(&Request::Exec {
        db_id: 0,
        stmt_id: 7,
        params: vec![],
    });
    stream.write_all(&exec).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 12);
    let prepare = message(&Request::Prepare {
        db_id: 0,
        sql: "INSERT INTO t VALUES (-1)".into(),
        with_tail: false,
    });
    stream.write_all(&prepare).unwrap();
    let Some(Response::Stmt { stmt_id, .. }) = read_response(&mut stream) else {
        panic!("PREPARE failed");
    };
    assert_eq!(stmt_id, 0, "dqlite's first statement id");
    let finalize = message(&Request::Finalize { db_id: 0, stmt_id });
    stream.write_all(&finalize).unwrap();
    assert!(matches!(read_response(&mut stream), Some(Response::Empty)));
    stream.write_all(&finalize).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 12);
    let exec = message(&Request::Exec {
        db_id: 0,
        stmt_id,
        params: vec![],
    });
    stream.write_all(&exec).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 12);
    // A database id other than 0.
    let query = message(&Request::QuerySql {
        db_id: 3,
        sql: "SELECT 1".into(),
        params: vec![],
    });
    stream.write_all(&query).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 12);
    stream.write_all(&message(&Request::Leader)).unwrap();
    assert!(matches!(
        read_response(&mut stream),
        Some(Response::Server { .. })
    ));
    serve(&mut good);

    // A header claiming 0xffffffff words: FAILURE, then the connection is closed (its body
    // cannot be skipped).
    let mut stream = raw(&address);
    stream.write_all(&1u64.to_le_bytes()).unwrap();
    stream.write_all(&header(u32::MAX, 8)).unwrap();
    assert_eq!(failure_code(read_response(&mut stream)), 1005);
    assert!(closed(&mut stream));
    serve(&mut good);

    // A half-sent message, then the client vanishes; and a client that disconnects in the
    // middle of a transaction: it is rolled back.
    let mut stream = raw(&address);
    stream.write_all(&1u64.to_le_bytes()).unwrap();
    stream.write_all(&header(4, 8)).unwrap();
    stream.write_all(&[0; 5]).unwrap();
    drop(stream);
    let mut quitter = Connection::connect(&address, &ClientConfig::default()).unwrap();
    quitter.open("bad").unwrap();
    quitter.exec_sql("BEGIN", &[]).unwrap();
    quitter
        .exec_sql("INSERT INTO t VALUES (-100)", &[])
        .unwrap();
    drop(quitter);
    serve(&mut good);

    // Random garbage after the version word: FAILUREs or a close, never a crash.
    let mut state = 0x1234_5678_u64;
    for _ in 0..20 {
        let mut stream = raw(&address);
        let mut bytes = 1u64.to_le_bytes().to_vec();
        for _ in 0..64 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            bytes.push((state >> 56) as u8);
        }
        // Keep the claimed length small, so the node does not wait for a body never sent.
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        stream.write_all(&bytes).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    serve(&mut good);

    let rows = good
        .query_sql("SELECT count(*), sum(x) FROM t", &[])
        .unwrap();
    let n = inserted;
    assert_eq!(
        rows.rows[0],
        vec![Value::Integer(n), Value::Integer(n * (n + 1) / 2)],
        "every good write is there, and nothing of the abandoned transaction"
    );
}
